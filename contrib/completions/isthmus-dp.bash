# bash completion for isthmus-dp
_isthmus_dp() {
    local cur prev words cword
    _init_completion || return
    case $prev in
        -c|--config) _filedir toml; return ;;
        --backend) COMPREPLY=($(compgen -W "udp afxdp" -- "$cur")); return ;;
        --unrouted) COMPREPLY=($(compgen -W "local drop" -- "$cur")); return ;;
        --xdp-mode) COMPREPLY=($(compgen -W "native generic" -- "$cur")); return ;;
        --underlay|--mesh) _available_interfaces; return ;;
        --user) COMPREPLY=($(compgen -u -- "$cur")); return ;;
        --log-format) COMPREPLY=($(compgen -W "text json" -- "$cur")); return ;;
        --metrics|--threads|--ctl-socket) return ;;
    esac
    COMPREPLY=($(compgen -W "-f --foreground -c --config --metrics --threads --unrouted --ctl-socket --backend --underlay --mesh --xdp-mode --user --log-format --version" -- "$cur"))
}
complete -F _isthmus_dp isthmus-dp
