# bash completion for isthmus-cp
_isthmus_cp() {
    local cur prev words cword
    _init_completion || return
    case $prev in
        -c|--config) _filedir toml; return ;;
        --ctl-socket|--status-socket|--metrics) return ;;
        --user) COMPREPLY=($(compgen -u -- "$cur")); return ;;
        --log-format) COMPREPLY=($(compgen -W "text json" -- "$cur")); return ;;
    esac
    COMPREPLY=($(compgen -W "-c --config --ctl-socket --status-socket --metrics --user --log-format --version" -- "$cur"))
}
complete -F _isthmus_cp isthmus-cp
