# bash completion for isthmusctl
_isthmusctl() {
    local cur prev words cword
    _init_completion || return
    case $cword in
        1)
            COMPREPLY=($(compgen -W "genkey pubkey check-config show reload up down --version --help" -- "$cur"))
            return ;;
    esac
    case ${words[1]} in
        check-config)
            _filedir toml ;;
        up|down)
            _filedir conf ;;
        show)
            if [[ $cword -eq 2 ]]; then
                COMPREPLY=($(compgen -W "peers fib stats neighbours routes babel" -- "$cur"))
            else
                local ifs=$(ls /var/run/isthmus 2>/dev/null | sed -n 's/\.ctl$//p')
                COMPREPLY=($(compgen -W "$ifs --socket" -- "$cur"))
            fi ;;
        reload)
            local ifs=$(ls /var/run/isthmus 2>/dev/null | sed -n 's/\.ctl$//p')
            COMPREPLY=($(compgen -W "$ifs" -- "$cur")) ;;
    esac
}
complete -F _isthmusctl isthmusctl
