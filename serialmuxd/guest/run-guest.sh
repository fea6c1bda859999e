#!/usr/bin/env bash
# run-guest.sh - start serialmuxd's tiny test guest (built by build-guest.sh)
#                under qemu-system-x86_64, with COM1 (ttyS0) on a unix socket
#                or a pty and QMP on a unix socket, all inside one run
#                directory.  Shipped inside the serialmuxd package;
#                serialmuxd.guest.GuestVM runs it.  Ported from the team's
#                sertest recipe.
#
# Usage: run-guest.sh [options] [-- extra qemu args...]
#
#   -d, --run-dir DIR    run directory (created; default: mktemp -d
#                        /tmp/smx-guest.XXXXXX; keep it short: unix socket
#                        paths are limited to 107 bytes).  Holds:
#                          ttyS0.sock   COM1, unix stream socket, QEMU is the
#                                       server (server=on,wait=off)  [socket]
#                          ttyS0.pty    symlink to /dev/pts/N             [pty]
#                          ttyS1.sock / ttyS1.pty   COM2, with --com2
#                          qmp.sock     QMP (JSON) server socket: for the
#                                       program under test (serialmuxd)
#                          ctl.sock     a second QMP socket for the test
#                                       harness (QEMU serves one client per
#                                       QMP socket, so the two must not share)
#                          console.log  everything the guest wrote on COM1
#                                       (QEMU chardev logfile; also written
#                                       while no client is connected)
#                          qemu.pid     QEMU's pid (stop it with kill, or QMP
#                                       "quit")
#                          qemu.log     QEMU's stderr (daemon mode)
#                          guest.env    the KEY=VALUE lines printed below
#   -c, --cache DIR      output of build-guest.sh (default:
#                        $SERIALMUXD_GUEST_CACHE, else
#                        ${XDG_CACHE_HOME:-~/.cache}/serialmuxd/guest).  Built on demand
#                        (build-guest.sh is called, a ~20 ms no-op when up
#                        to date; GUEST_NO_BUILD=1 skips that call).
#   --serial socket|pty  backend of COM1 (default socket).  QEMU 7.2 cannot
#                        fan one serial port out to two backends; use --com2
#                        for a second port.
#   --com2 socket|pty    add COM2 (ttyS1) with a getty, same backends.
#   --daemonize          start QEMU in the background (-daemonize), wait until
#                        the sockets exist, print the KEY=VALUE lines, exit 0.
#   --foreground         (default) print the KEY=VALUE lines, then exec QEMU;
#                        the pid of this script becomes QEMU's pid.
#   --paused             start with the CPU stopped (-S); send QMP "cont" once
#                        the test is connected to COM1, so that no output is
#                        missed (with wait=off, COM1 bytes written while no
#                        client is connected go only to console.log).
#   --boot pvh|bzimage   kernel entry (default pvh when CACHE/vmlinux exists:
#                        QEMU loads the uncompressed ELF, no decompression;
#                        bzimage: classic vmlinuz via SeaBIOS linuxboot)
#   --accel auto|kvm|tcg (default auto: kvm if a one-time probe boots the
#                        guest kernel under KVM, else tcg; kvm uses -cpu host)
#   -m, --mem SIZE       guest memory (default 128M; 96M is the minimum,
#                        64M reset-loops in the kernel's early boot)
#   --smp N              vCPUs (default 1; QMP inject-nmi hits every vCPU)
#   --autologin          root shell on ttyS0 instead of a login prompt
#   --nmi-panic          kernel arg unknown_nmi_panic: an NMI that nothing
#                        claims (QMP inject-nmi) panics the kernel, the
#                        analogue of Windows' NMI crash dump
#   --panic-reboot N     kernel arg panic=N: reboot N seconds after a panic
#                        (default: panic=0, the guest stays halted)
#   --pvpanic[=ACTION]   add -device pvpanic (the guest loads its driver): a
#                        guest panic raises the QMP event GUEST_PANICKED.
#                        ACTION (QEMU -action panic=ACTION), default none:
#                          none      VM keeps running, the panic text is
#                                    printed on COM1 as without pvpanic
#                          pause     VM stops inside panic() (query-status:
#                                    "guest-panicked") BEFORE the panic text
#                                    reaches COM1 (printk from NMI context is
#                                    deferred); QMP "cont" lets it print;
#                                    system_reset + cont reboots
#                          shutdown  QEMU exits (QEMU's own default)
#   --no-shutdown        keep QEMU alive after the guest powers off (status
#                        "shutdown"); default: QEMU exits on guest poweroff
#   --append "ARGS"      extra kernel command line (e.g. "quiet",
#                        "sertest.sysctl=kernel.unknown_nmi_panic=1")
#   -h, --help           this text
#
# Printed on stdout (and written to RUN_DIR/guest.env), one per line:
#   RUN_DIR=...  QMP_SOCKET=...  CONTROL_SOCKET=...
#   SERIAL_SOCKET=... or SERIAL_PTY=/dev/pts/N
#   CONSOLE_LOG=...  QEMU_PID=... (daemon mode; foreground: the script's pid)
#   [COM2_SOCKET=... | COM2_PTY=...]  ACCEL=kvm|tcg
#
# Examples:
#   run-guest.sh --daemonize -d /tmp/g1          # socket COM1, QMP, background
#   socat -,raw,echo=0 unix-connect:/tmp/g1/ttyS0.sock   # interactive console
#   kill "$(cat /tmp/g1/qemu.pid)"                # or QMP {"execute":"quit"}
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
RUN_DIR= CACHE=${SERIALMUXD_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serialmuxd/guest}
BOOT=auto SERIAL=socket COM2= DAEMON=0 PAUSED=0 ACCEL=auto MEM=128M SMP=1
AUTOLOGIN=0 NMI_PANIC=0 PANIC=0 PVPANIC=0 NO_SHUTDOWN=0 APPEND=
EXTRA=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "run-guest: ERROR: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case $1 in
        -d|--run-dir)  RUN_DIR=$2; shift ;;
        -c|--cache)    CACHE=$2; shift ;;
        --serial)      SERIAL=$2; shift ;;
        --com2)        COM2=$2; shift ;;
        --daemonize)   DAEMON=1 ;;
        --foreground)  DAEMON=0 ;;
        --paused)      PAUSED=1 ;;
        --accel)       ACCEL=$2; shift ;;
        --boot)        BOOT=$2; shift ;;
        -m|--mem)      MEM=$2; shift ;;
        --smp)         SMP=$2; shift ;;
        --autologin)   AUTOLOGIN=1 ;;
        --nmi-panic)   NMI_PANIC=1 ;;
        --panic-reboot) PANIC=$2; shift ;;
        --pvpanic)     PVPANIC=none ;;
        --pvpanic=*)   PVPANIC=${1#--pvpanic=} ;;
        --no-shutdown) NO_SHUTDOWN=1 ;;
        --append)      APPEND=$2; shift ;;
        -h|--help)     usage 0 ;;
        --)            shift; EXTRA=("$@"); break ;;
        *)             echo "run-guest: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done
[[ $SERIAL = socket || $SERIAL = pty ]] || die "--serial must be socket or pty"
[[ -z $COM2 || $COM2 = socket || $COM2 = pty ]] || die "--com2 must be socket or pty"

# --- guest image (build or reuse the cache) ----------------------------------
if [[ ! -s $CACHE/guest.env ]] || [[ ${GUEST_NO_BUILD:-0} != 1 ]]; then
    "$HERE/build-guest.sh" "$CACHE" >&2
fi
KERNEL=$CACHE/vmlinuz INITRD=$CACHE/initramfs.cpio.gz
[[ -s $KERNEL && -s $INITRD ]] || die "no guest in $CACHE (run build-guest.sh)"
BOOT_KERNEL=$KERNEL
case $BOOT in
    auto)    [[ -s $CACHE/vmlinux ]] && BOOT_KERNEL=$CACHE/vmlinux ;;
    pvh)     BOOT_KERNEL=$CACHE/vmlinux; [[ -s $BOOT_KERNEL ]] || die "no $BOOT_KERNEL" ;;
    bzimage) ;;
    *)       die "--boot must be pvh or bzimage" ;;
esac

# --- accelerator ------------------------------------------------------------
kvm_works() {
    # /dev/kvm may exist and open fine while a Linux guest still cannot run
    # (seen on a nested/microVM host: the kernel hangs in its decompressor
    # and "-cpu host" aborts QEMU).  So boot the real kernel once under KVM
    # with earlyprintk and look for "Linux version" within 8 s.  The verdict
    # is cached in $CACHE/.kvm-probe (keyed by host kernel, QEMU, guest
    # kernel), so only the first run on a machine pays for the probe.
    [[ -r /dev/kvm && -w /dev/kvm ]] || return 1
    local key verdict=fail tmp pid
    key="$(uname -r)|$(qemu-system-x86_64 --version | head -n1)|$(stat -c %s "$KERNEL")"
    if [[ -f $CACHE/.kvm-probe && $(head -n1 "$CACHE/.kvm-probe") = "$key" ]]; then
        [[ $(tail -n1 "$CACHE/.kvm-probe") = ok ]]; return
    fi
    tmp=$(mktemp -d)
    timeout 15 qemu-system-x86_64 -accel kvm -cpu host -m 128M -nodefaults \
        -no-user-config -display none -no-reboot -monitor none \
        -kernel "$KERNEL" -append "earlyprintk=ttyS0 console=ttyS0 panic=-1" \
        -serial "file:$tmp/out" </dev/null >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 80); do
        if grep -q 'Linux version' "$tmp/out" 2>/dev/null; then verdict=ok; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    rm -rf "$tmp"
    printf '%s\n%s\n' "$key" "$verdict" > "$CACHE/.kvm-probe"
    [[ $verdict = ok ]]
}
if [[ $ACCEL = auto ]]; then
    if [[ -e /dev/kvm ]] && kvm_works 2>/dev/null; then ACCEL=kvm; else ACCEL=tcg; fi
fi

# --- run directory -----------------------------------------------------------
if [[ -z $RUN_DIR ]]; then RUN_DIR=$(mktemp -d /tmp/smx-guest.XXXXXX); fi
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
# unix socket paths must stay below ~107 bytes
(( ${#RUN_DIR} < 90 )) || die "run dir path too long for unix sockets: $RUN_DIR"
rm -f "$RUN_DIR"/{ttyS0.sock,ttyS1.sock,ttyS0.pty,ttyS1.pty,qmp.sock,ctl.sock,qemu.pid,guest.env}

# chardev_args ID KIND BASENAME -> the -chardev value
chardev_args() {
    local id=$1 kind=$2 base=$3 log=${4:-}
    local a
    if [[ $kind = socket ]]; then
        a="socket,id=$id,path=$RUN_DIR/$base.sock,server=on,wait=off"
    else
        a="pty,id=$id"
    fi
    [[ -n $log ]] && a+=",logfile=$log,logappend=on"
    printf '%s' "$a"
}

CMDLINE="console=ttyS0,115200 panic=$PANIC"
[[ $AUTOLOGIN = 1 ]] && CMDLINE+=" sertest.autologin=1"
[[ $NMI_PANIC = 1 ]] && CMDLINE+=" unknown_nmi_panic"
[[ -n $COM2 ]] && CMDLINE+=" sertest.com2=1"
[[ -n $APPEND ]] && CMDLINE+=" $APPEND"

QEMU=(qemu-system-x86_64
    -name sertest-guest
    -machine pc -accel "$ACCEL" -m "$MEM" -smp "$SMP"
    -nodefaults -no-user-config -display none
    -kernel "$BOOT_KERNEL" -initrd "$INITRD" -append "$CMDLINE"
    -chardev "$(chardev_args s0 "$SERIAL" ttyS0 "$RUN_DIR/console.log")"
    -serial chardev:s0
    -qmp "unix:$RUN_DIR/qmp.sock,server=on,wait=off"
    -qmp "unix:$RUN_DIR/ctl.sock,server=on,wait=off"
    -pidfile "$RUN_DIR/qemu.pid")
[[ $ACCEL = kvm ]] && QEMU+=(-cpu host)
if [[ -n $COM2 ]]; then
    QEMU+=(-chardev "$(chardev_args s1 "$COM2" ttyS1)" -serial chardev:s1)
fi
[[ $PAUSED = 1 ]] && QEMU+=(-S)
[[ $PVPANIC != 0 ]] && QEMU+=(-device pvpanic -action "panic=$PVPANIC")
[[ $NO_SHUTDOWN = 1 ]] && QEMU+=(-no-shutdown)
QEMU+=("${EXTRA[@]}")

# print KEY=VALUE lines (stdout + guest.env)
report() {
    {
        echo "RUN_DIR=$RUN_DIR"
        echo "QMP_SOCKET=$RUN_DIR/qmp.sock"
        echo "CONTROL_SOCKET=$RUN_DIR/ctl.sock"
        if [[ $SERIAL = socket ]]; then echo "SERIAL_SOCKET=$RUN_DIR/ttyS0.sock"
        elif [[ -n ${PTY0:-} ]]; then echo "SERIAL_PTY=$PTY0"; fi
        if [[ $COM2 = socket ]]; then echo "COM2_SOCKET=$RUN_DIR/ttyS1.sock"
        elif [[ -n ${PTY1:-} ]]; then echo "COM2_PTY=$PTY1"; fi
        echo "CONSOLE_LOG=$RUN_DIR/console.log"
        echo "QEMU_PID=$1"
        echo "ACCEL=$ACCEL"
    } | tee "$RUN_DIR/guest.env"
}

if [[ $DAEMON = 0 ]]; then
    if [[ $SERIAL = pty || $COM2 = pty ]]; then
        echo "run-guest: pty path: see QEMU's 'char device redirected to /dev/pts/N (label s0)' below" >&2
    fi
    report $$
    exec "${QEMU[@]}"
fi

# daemon mode: QEMU forks, the parent returns once the devices are set up
: > "$RUN_DIR/qemu.log"
# The daemonized QEMU must hold none of our caller's descriptors: an inherited pipe (uvloop's spawn leaves
# one open) would keep the caller waiting for EOF for as long as the VM runs.  Close every fd above 2 in a
# subshell (bash keeps reading this script from 255 in the parent) before exec'ing QEMU.
(
    for fd_path in /proc/self/fd/*; do
        fd=${fd_path##*/}
        [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null
    done
    exec "${QEMU[@]}" -daemonize >>"$RUN_DIR/qemu.log" 2>&1 </dev/null
) || { cat "$RUN_DIR/qemu.log" >&2; die "qemu failed to start"; }
# "char device redirected to /dev/pts/3 (label s0)"
PTY0=$(sed -n 's/^char device redirected to \(\/dev\/pts\/[0-9]*\) (label s0)$/\1/p' "$RUN_DIR/qemu.log")
PTY1=$(sed -n 's/^char device redirected to \(\/dev\/pts\/[0-9]*\) (label s1)$/\1/p' "$RUN_DIR/qemu.log")
[[ -n $PTY0 ]] && ln -sf "$PTY0" "$RUN_DIR/ttyS0.pty"
[[ -n $PTY1 ]] && ln -sf "$PTY1" "$RUN_DIR/ttyS1.pty"
for _ in $(seq 50); do [[ -s $RUN_DIR/qemu.pid && -S $RUN_DIR/ctl.sock ]] && break; sleep 0.1; done
[[ -S $RUN_DIR/qmp.sock && -S $RUN_DIR/ctl.sock ]] || die "QMP sockets did not appear"
report "$(cat "$RUN_DIR/qemu.pid")"
