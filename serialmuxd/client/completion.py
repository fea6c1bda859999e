"""``serialmux completion bash``: a completion script for bash.  Commands and options are completed from
this list; console names are asked from the daemon (``serialmux ports --names``) with the same settings as
the command line being completed."""

from __future__ import annotations

COMMANDS = ("connect", "ports", "log", "send", "enable", "disable", "status", "completion")
SEND_ACTIONS = ("nmi", "reset", "restart", "start", "break", "sysrq", "key")
GLOBAL_OPTIONS = "--url --user --token-file --ca-file --cert-file --key-file --config --help --version"
OPTIONS = "--read-only --force --from --escape --follow --raw --group --json --names --reason"

BASH = r"""# serialmux bash completion: eval "$(serialmux completion bash)"
_serialmux() {
    local cur=${COMP_WORDS[COMP_CWORD]} cmd="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in -*) ;; *) cmd=${COMP_WORDS[i]}; break ;; esac
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "__COMMANDS__ __GLOBAL__" -- "$cur"))
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "__OPTIONS__ __GLOBAL__" -- "$cur"))
    elif [[ $cmd == send && $COMP_CWORD -eq $((i + 1)) ]]; then
        COMPREPLY=($(compgen -W "__SEND__" -- "$cur"))
    elif [[ $cmd != completion && $cmd != status && $cmd != ports ]]; then
        COMPREPLY=($(compgen -W "$(serialmux ports --names 2>/dev/null)" -- "$cur"))
    fi
}
complete -F _serialmux serialmux
"""


def bash_script() -> str:
    return (
        BASH.replace("__COMMANDS__", " ".join(COMMANDS))
        .replace("__SEND__", " ".join(SEND_ACTIONS))
        .replace("__GLOBAL__", GLOBAL_OPTIONS)
        .replace("__OPTIONS__", OPTIONS)
    )
