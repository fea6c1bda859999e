#!/usr/bin/env bash
# build-guest.sh - build serialmuxd's tiny Linux test guest (kernel + busybox
#                  initramfs) for serial-console / QMP integration tests and
#                  `serialmuxd demo --qemu`.  Shipped inside the serialmuxd
#                  package (serialmuxd/guest/); serialmuxd.guest.ensure_guest()
#                  runs it.  Ported from the team's sertest recipe.
#
# Usage:   build-guest.sh [OUTDIR]
#          OUTDIR defaults to $SERIALMUXD_GUEST_CACHE, else
#          ${XDG_CACHE_HOME:-~/.cache}/serialmuxd/guest.  It holds a kernel and
#          binaries: keep it outside the git repo.
#
# What it does (Debian 12 "bookworm", x86_64; needs only the Debian archive):
#   1. `apt-get download` of the kernel package that linux-image-amd64 points
#      to (e.g. linux-image-6.1.0-56-amd64) and of busybox-static.  Nothing is
#      installed into the system; the .debs are unpacked with dpkg-deb only.
#   2. Extracts /boot/vmlinuz-* and a few modules (pvpanic; evdev and the ACPI
#      button driver, so that the ACPI power button - QMP system_powerdown -
#      powers the guest off cleanly) from the kernel .deb, and /bin/busybox
#      from busybox-static.
#   3. Writes a gzip'ed cpio (newc) initramfs with a pure-bash cpio writer
#      (no cpio binary, no root needed; files are owned by root in the
#      archive, /dev/console is a real device node).
#
# Result in OUTDIR:
#   vmlinuz              kernel (copy of vmlinuz-<kver>, bzImage)
#   vmlinux              the same kernel uncompressed (ELF, ~66 MB) for QEMU's
#                        PVH direct boot: ~4 s faster to boot under TCG
#   initramfs.cpio.gz    busybox userland, /init, getty on ttyS0
#   guest.env            KEY=VALUE facts (paths, kernel version, credentials)
#
# Idempotent and cached: downloads/extractions are skipped when the outputs
# for the same package versions exist; the initramfs is rebuilt only when this
# script, the package versions or the credentials change.  A second run takes
# about 20 ms and needs no network (GUEST_REFRESH=1 asks apt for newer
# packages; if apt cannot answer - no lists, no network - the cache is reused).
#
# Environment knobs (all optional):
#   GUEST_KERNEL_META     meta package to follow     (default linux-image-amd64;
#                         linux-image-cloud-amd64 also works and is smaller)
#   GUEST_KERNEL_PKG      exact kernel package, skips the meta lookup
#   GUEST_ROOT_PASSWORD   password of root           (default: root)
#   GUEST_USER            extra unprivileged user    (default: test)
#   GUEST_USER_PASSWORD   its password               (default: test)
#   GUEST_KEEP_DEBS=1     keep the downloaded .debs (default: delete after use)
#   GUEST_APT_UPDATE=1    run `apt-get update` first (done automatically, as
#                         root, when apt has no candidate for the packages)
#
# Guest behaviour: prints "SERTEST-GUEST: ..." banner lines on COM1 (ttyS0,
# also the kernel console), then a getty login prompt "sertest login: ".
# The ACPI power button (QMP system_powerdown) runs `poweroff` via busybox
# acpid.  Kernel command line switches understood by /init:
#   sertest.autologin=1   root shell on ttyS0 instead of getty/login
#   sertest.com2=1        also run a getty on ttyS1 (COM2)
#   sertest.acpid=0       ignore the ACPI power button (no acpid)
#   sertest.sysctl=k=v[,k=v...]   sysctl settings applied at boot
# Standard kernel switches that matter for tests: unknown_nmi_panic (panic on
# an NMI nobody claims, e.g. QMP inject-nmi), panic=N (reboot N s after a
# panic), quiet / loglevel=N.
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
OUT=${1:-${SERIALMUXD_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serialmuxd/guest}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# One build at a time per cache (parallel test runs share it); the loser waits, then finds it up to date.
if command -v flock >/dev/null; then
    exec 9>"$OUT/.build.lock"
    flock -w 900 9 || { printf 'build-guest: ERROR: %s is locked by another build\n' "$OUT" >&2; exit 1; }
fi

ROOT_PW=${GUEST_ROOT_PASSWORD:-root}
USER_NAME=${GUEST_USER:-test}
USER_PW=${GUEST_USER_PASSWORD:-test}
META=${GUEST_KERNEL_META:-linux-image-amd64}

log() { printf 'build-guest: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- versions --
# candidate_version PKG -> prints the version apt would download, or nothing
candidate_version() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}' | grep -v '^(none)$' || true
}

resolve_packages() {
    if [[ -n ${GUEST_KERNEL_PKG:-} ]]; then
        KPKG=$GUEST_KERNEL_PKG
    else
        # "linux-image-amd64 Depends: linux-image-6.1.0-56-amd64"
        KPKG=$(apt-cache depends "$META" 2>/dev/null |
               awk '$1 ~ /Depends:/ && $2 ~ /^linux-image-[0-9]/ {print $2; exit}') || true
    fi
    KPKG_VER=${KPKG:+$(candidate_version "$KPKG")}
    BB_VER=$(candidate_version busybox-static)
    [[ -n ${KPKG:-} && -n $KPKG_VER && -n $BB_VER ]]
}

# Fast path: a previous run with the same script, settings and credentials
# left a complete result -> reuse it without asking apt (offline-safe, ~10 ms).
# GUEST_REFRESH=1 re-resolves the package versions (picks up a new kernel).
STAMP_WANT=$( { sha256sum < "$SCRIPT_PATH"
                echo "$META ${GUEST_KERNEL_PKG:-} $ROOT_PW $USER_NAME $USER_PW"; } |
              sha256sum | cut -c1-16)
if [[ ${GUEST_REFRESH:-0} != 1 && -s $OUT/initramfs.cpio.gz && -s $OUT/vmlinuz &&
      -s $OUT/guest.env && $(cat "$OUT/.stamp" 2>/dev/null) = "$STAMP_WANT" ]]; then
    log "up to date: $OUT (GUEST_REFRESH=1 to look for newer packages)"
    exit 0
fi

if [[ ${GUEST_APT_UPDATE:-0} = 1 ]]; then apt-get update -qq; fi
if ! resolve_packages; then
    if [[ -s $OUT/guest.env && -s $OUT/initramfs.cpio.gz && -s $OUT/vmlinuz ]]; then
        log "apt cannot resolve the packages; reusing cached guest in $OUT"
        exit 0
    fi
    if [[ $(id -u) = 0 ]]; then
        log "no apt candidate for $META / busybox-static: running apt-get update"
        apt-get update -qq
        resolve_packages || die "apt still cannot resolve $META / busybox-static"
    else
        die "apt has no candidate for $META / busybox-static (run apt-get update as root)"
    fi
fi
KVER=${KPKG#linux-image-}           # e.g. 6.1.0-56-amd64
log "kernel package $KPKG $KPKG_VER, busybox-static $BB_VER"

# ---------------------------------------------------------------- download --
DEBS=$OUT/debs
mkdir -p "$DEBS"
# fetch PKG VERSION -> prints the path of the .deb (downloads if needed)
fetch() {
    local pkg=$1 ver=$2 f
    f=$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
    if [[ -z $f ]]; then
        log "apt-get download $pkg=$ver"
        # apt warns that it cannot drop privileges to _apt for a private dir;
        # that warning is harmless and filtered.
        (cd "$DEBS" && apt-get download -q "$pkg=$ver" 2>&1 >/dev/null |
            grep -v 'Download is performed unsandboxed' >&2 || true)
        f=$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
        [[ -n $f ]] || die "download of $pkg=$ver failed"
    fi
    printf '%s\n' "$f"
}

# kernel: vmlinuz + the pvpanic modules (so a guest panic can be signalled to
# QEMU's pvpanic device -> QMP GUEST_PANICKED event) + evdev and the ACPI
# button driver (the power button reaches busybox acpid as an input event).
# The marker names the module set, so a cache from an older set re-extracts.
KDIR=$OUT/kernel-$KVER
KMARK=$KDIR/.done-pvpanic-acpi-$KPKG_VER
if [[ ! -s $KDIR/vmlinuz || ! -f $KMARK ]]; then
    kdeb=$(fetch "$KPKG" "$KPKG_VER")
    rm -rf "$KDIR" && mkdir -p "$KDIR"
    log "extracting vmlinuz from $(basename "$kdeb")"
    dpkg-deb --fsys-tarfile "$kdeb" |
        tar -x -C "$KDIR" --wildcards "./boot/vmlinuz-*" "./boot/config-*" \
            "./lib/modules/*/kernel/drivers/misc/pvpanic/*" \
            "./lib/modules/*/kernel/drivers/acpi/button.ko*" \
            "./lib/modules/*/kernel/drivers/input/evdev.ko*"
    mv "$KDIR/boot/vmlinuz-$KVER" "$KDIR/vmlinuz"
    mv "$KDIR/boot/config-$KVER" "$KDIR/config"
    mkdir -p "$KDIR/modules"
    find "$KDIR/lib" -name '*.ko*' -exec mv {} "$KDIR/modules/" \;
    rm -rf "$KDIR/boot" "$KDIR/lib"
    touch "$KMARK"
    [[ ${GUEST_KEEP_DEBS:-0} = 1 ]] || rm -f "$kdeb"
fi

# busybox-static
BBDIR=$OUT/busybox-$BB_VER
BB=$BBDIR/busybox
if [[ ! -x $BB ]]; then
    bdeb=$(fetch busybox-static "$BB_VER")
    rm -rf "$BBDIR.tmp" && mkdir -p "$BBDIR.tmp"
    dpkg-deb -x "$bdeb" "$BBDIR.tmp"
    rm -rf "$BBDIR" && mkdir -p "$BBDIR"
    mv "$BBDIR.tmp/bin/busybox" "$BB"
    rm -rf "$BBDIR.tmp"
    [[ ${GUEST_KEEP_DEBS:-0} = 1 ]] || rm -f "$bdeb"
fi

# PVH entry: this kernel (CONFIG_PVH=y) can be booted by QEMU straight from
# the uncompressed ELF vmlinux, which skips the XZ decompression that costs
# ~3-4 s under TCG.  The ELF is the XZ payload inside the bzImage; extract it
# (xz, or busybox unxz).  Any failure just leaves the bzImage path.
if [[ ! -s $KDIR/vmlinux && ! -f $KDIR/.no-pvh ]]; then
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$KDIR/vmlinuz" | head -n1 | cut -d: -f1 || true)
    if grep -q '^CONFIG_PVH=y' "$KDIR/config" && [[ -n $off ]]; then
        log "extracting the uncompressed vmlinux (PVH boot)"
        if command -v xz >/dev/null; then unxz=(xz -dc); else unxz=("$BB" unxz -c); fi
        # trailing bytes after the XZ stream make the decompressor complain
        tail -c +$((off + 1)) "$KDIR/vmlinuz" | "${unxz[@]}" > "$KDIR/vmlinux.tmp" 2>/dev/null || true
    fi
    if [[ -s $KDIR/vmlinux.tmp && $(head -c4 "$KDIR/vmlinux.tmp" | tail -c3) = ELF ]]; then
        mv "$KDIR/vmlinux.tmp" "$KDIR/vmlinux"
    else
        rm -f "$KDIR/vmlinux.tmp"; touch "$KDIR/.no-pvh"
        log "no PVH vmlinux (bzImage boot only)"
    fi
fi

# --------------------------------------------------------------- initramfs --
TMP=$(mktemp -d "$OUT/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# --- minimal newc cpio writer -------------------------------------------
# newc = "070701" + 13 fields of 8 hex digits + name + NUL, padded to 4
# bytes, then the data, padded to 4 bytes.  The kernel accepts it as is.
CPIO=$TMP/initramfs.cpio
INO=300000
MTIME=${SOURCE_DATE_EPOCH:-0}
pad4() { case $(( $1 % 4 )) in 1) printf '\0\0\0';; 2) printf '\0\0';; 3) printf '\0';; esac; }
# cpio_hdr NAME MODE(decimal) NLINK SIZE [RDEVMAJOR RDEVMINOR]
cpio_hdr() {
    local name=$1 mode=$2 nlink=$3 size=$4 rmaj=${5:-0} rmin=${6:-0}
    local nsz=$(( ${#name} + 1 ))
    INO=$((INO + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$INO" "$mode" 0 0 "$nlink" "$MTIME" "$size" 0 0 "$rmaj" "$rmin" "$nsz" 0
    printf '%s\0' "$name"
    pad4 $(( 110 + nsz ))
}
# modes: S_IFDIR 040000, S_IFCHR 020000, S_IFREG 0100000, S_IFLNK 0120000
add_dir()  { cpio_hdr "$1" $(( 8#040000 | 8#${2:-755} )) 2 0; }     # NAME [PERM]
add_node() { cpio_hdr "$1" $(( 8#020000 | 8#$2 )) 1 0 "$3" "$4"; }  # NAME PERM MAJ MIN
add_link() { cpio_hdr "$1" $(( 8#0120777 )) 1 ${#2}; printf '%s' "$2"; pad4 ${#2}; }
add_file() {                                                        # NAME PERM SRC
    local size; size=$(stat -c %s "$3")
    cpio_hdr "$1" $(( 8#0100000 | 8#$2 )) 1 "$size"; cat "$3"; pad4 "$size"
}
cpio_trailer() { cpio_hdr "TRAILER!!!" 0 1 0; }

# --- guest files ----------------------------------------------------------
ROOT_HASH=$("$BB" mkpasswd -m sha512 "$ROOT_PW" "sertestroot")
USER_HASH=$("$BB" mkpasswd -m sha512 "$USER_PW" "sertestuser")

cat > "$TMP/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
$USER_NAME:x:1000:1000:$USER_NAME:/home/$USER_NAME:/bin/sh
EOF
cat > "$TMP/shadow" <<EOF
root:$ROOT_HASH:19000:0:99999:7:::
$USER_NAME:$USER_HASH:19000:0:99999:7:::
EOF
cat > "$TMP/group" <<EOF
root:x:0:
tty:x:5:
$USER_NAME:x:1000:
EOF
cat > "$TMP/issue" <<EOF

SERTEST-GUEST: serial console \\l, log in as root/$ROOT_PW or $USER_NAME/$USER_PW

EOF
cat > "$TMP/acpi-power" <<'EOF'
#!/bin/sh
echo "SERTEST-GUEST: ACPI power button pressed, powering off" > /dev/console
exec /sbin/poweroff
EOF
cat > "$TMP/profile" <<'EOF'
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
# -> "root@sertest:~# " / "test@sertest:~$ "
PS1='\u@\h:\w\$ '
export PS1
EOF

# /init: PID 1.  Mounts the API filesystems, prints the banner, writes
# /etc/inittab according to the kernel command line and execs busybox init
# (so that poweroff/reboot/ctrl-alt-del work the usual way).
cat > "$TMP/init" <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
hostname sertest

CMDLINE=$(cat /proc/cmdline)
AUTOLOGIN=0 COM2=0 ACPID=1 SYSCTLS=
for arg in $CMDLINE; do
    case $arg in
        sertest.autologin=1) AUTOLOGIN=1 ;;
        sertest.com2=1)      COM2=1 ;;
        sertest.acpid=0)     ACPID=0 ;;
        sertest.sysctl=*)    SYSCTLS=$(echo "${arg#sertest.sysctl=}" | tr ',' ' ') ;;
    esac
done
for s in $SYSCTLS; do sysctl -w "$s"; done

# pvpanic: lets QEMU see a guest panic (QMP event GUEST_PANICKED) when the
# VM has -device pvpanic (ISA, driver pvpanic-mmio) or pvpanic-pci.
for m in pvpanic pvpanic-mmio pvpanic-pci; do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done

# ACPI power button (QMP system_powerdown): the button driver turns it into
# KEY_POWER on an input device; busybox acpid maps that to the event
# "PWRF/00000080" and runs /etc/acpi/PWRF/00000080, which powers off the way
# a distribution's acpid/logind would.  Without this the guest ignores it.
ACPI_NOTE="ignored (sertest.acpid=0)"
if [ $ACPID = 1 ]; then
    insmod /lib/modules/evdev.ko 2>/dev/null
    insmod /lib/modules/button.ko 2>/dev/null
    if acpid -c /etc/acpi -l /tmp/acpid.log -p /run/acpid.pid; then
        ACPI_NOTE="poweroff (acpid)"
    else
        ACPI_NOTE="ignored (acpid failed)"
    fi
fi

{
    echo "::sysinit:/bin/true"
    if [ $AUTOLOGIN = 1 ]; then
        echo "ttyS0::respawn:-/bin/sh"
    else
        echo "ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100"
    fi
    [ $COM2 = 1 ] && echo "ttyS1::respawn:/sbin/getty -L 115200 ttyS1 vt100"
    echo "::ctrlaltdel:/sbin/reboot"
    echo "::shutdown:/bin/sync"
} > /etc/inittab

read -r UP _ < /proc/uptime
echo
echo "SERTEST-GUEST: userspace up, kernel $(uname -r), uptime ${UP}s, boot_id $(cat /proc/sys/kernel/random/boot_id)"
echo "SERTEST-GUEST: nmi: unknown_nmi_panic=$(cat /proc/sys/kernel/unknown_nmi_panic) panic_on_unrecovered_nmi=$(cat /proc/sys/kernel/panic_on_unrecovered_nmi) panic=$(cat /proc/sys/kernel/panic)"
echo "SERTEST-GUEST: acpi power button: $ACPI_NOTE"
exec /bin/busybox init
EOF

# --- write the archive ------------------------------------------------------
{
    for d in bin sbin usr usr/bin usr/sbin etc dev proc sys tmp run root \
             home "home/$USER_NAME" lib lib/modules etc/acpi etc/acpi/PWRF; do
        case $d in tmp) add_dir $d 1777 ;; root) add_dir $d 700 ;; *) add_dir $d ;; esac
    done
    add_node dev/console 600 5 1
    add_node dev/null 666 1 3
    add_node dev/ttyS0 660 4 64
    add_file bin/busybox 755 "$BB"
    # one symlink per applet, at the path busybox wants it (/bin, /sbin, ...)
    while read -r a; do
        [[ $a = bin/busybox ]] && continue
        [[ $a = */* ]] || a=bin/$a
        case ${a%/*} in bin|sbin|usr/bin|usr/sbin) ;; *) continue ;; esac
        rel=$(printf '%s' "${a%/*}" | sed 's#[^/][^/]*#..#g')   # bin->.. usr/bin->../..
        add_link "$a" "$rel/bin/busybox"
    done < <("$BB" --list-full)
    add_file init 755 "$TMP/init"
    add_file etc/passwd 644 "$TMP/passwd"
    add_file etc/shadow 600 "$TMP/shadow"
    add_file etc/group 644 "$TMP/group"
    add_file etc/issue 644 "$TMP/issue"
    add_file etc/profile 644 "$TMP/profile"
    add_file etc/acpi/PWRF/00000080 755 "$TMP/acpi-power"
    for ko in "$KDIR"/modules/*.ko; do
        [[ -f $ko ]] && add_file "lib/modules/$(basename "$ko")" 644 "$ko"
    done
    cpio_trailer
} > "$CPIO"
gzip -9 -n < "$CPIO" > "$TMP/initramfs.cpio.gz"

# --- publish (atomic renames) ----------------------------------------------
cp "$KDIR/vmlinuz" "$TMP/vmlinuz"
mv -f "$TMP/vmlinuz" "$OUT/vmlinuz"
rm -f "$OUT/vmlinux"
if [[ -s $KDIR/vmlinux ]]; then ln -f "$KDIR/vmlinux" "$OUT/vmlinux" 2>/dev/null || cp "$KDIR/vmlinux" "$OUT/vmlinux"; fi
mv -f "$TMP/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
cat > "$TMP/guest.env" <<EOF
GUEST_KERNEL=$OUT/vmlinuz
GUEST_KERNEL_PVH=$( [[ -s $OUT/vmlinux ]] && echo "$OUT/vmlinux" )
GUEST_INITRD=$OUT/initramfs.cpio.gz
GUEST_KERNEL_PKG=$KPKG
GUEST_KERNEL_VERSION=$KPKG_VER
GUEST_KVER=$KVER
GUEST_BUSYBOX_VERSION=$BB_VER
GUEST_ROOT_PASSWORD=$ROOT_PW
GUEST_USER=$USER_NAME
GUEST_USER_PASSWORD=$USER_PW
GUEST_HOSTNAME=sertest
EOF
mv -f "$TMP/guest.env" "$OUT/guest.env"
echo "$STAMP_WANT" > "$OUT/.stamp"
log "built $OUT/vmlinuz ($KVER) and $OUT/initramfs.cpio.gz ($(stat -c %s "$OUT/initramfs.cpio.gz") bytes)"
