# shellcheck shell=sh
# Helpers shared by the Weave Net test images' scripts: /home/weave/init.sh and
# /home/weave/launch.sh (weave-kube) and /usr/bin/launch.sh (weave-npc). Sourced.

log() {
    echo "weave[$(basename "$0")]: $*" >&2
}

# Decides which iptables backend this node uses and points iptables, ip6tables and
# their -save/-restore at it, through links in /usr/local/sbin (first on PATH, so the
# weaver's and weave-npc's own iptables calls go the same way).
#   IPTABLES_BACKEND=nft|legacy forces one; otherwise nft, unless the legacy tables
#   hold more rules than the nft ones (a node whose kube-proxy runs legacy iptables).
# Exports IPTABLES_BACKEND.
choose_iptables_backend() {
    mode=${IPTABLES_BACKEND:-}
    if [ -z "$mode" ]; then
        n_legacy=$(count_rules iptables-legacy-save)
        n_nft=$(count_rules iptables-nft-save)
        if [ "$n_legacy" -gt "$n_nft" ]; then
            mode=legacy
        else
            mode=nft
        fi
        log "iptables backend: $mode (rules: legacy $n_legacy, nft $n_nft)"
    fi
    case $mode in
        nft | legacy) ;;
        *)
            log "IPTABLES_BACKEND=$mode: expected nft or legacy"
            return 1
            ;;
    esac
    mkdir -p /usr/local/sbin
    for family in iptables ip6tables; do
        ln -sf "/usr/sbin/$family-$mode" "/usr/local/sbin/$family"
        ln -sf "/usr/sbin/$family-$mode-save" "/usr/local/sbin/$family-save"
        ln -sf "/usr/sbin/$family-$mode-restore" "/usr/local/sbin/$family-restore"
    done
    IPTABLES_BACKEND=$mode
    export IPTABLES_BACKEND
}

# Number of rules (`-A` lines) that `$1` (an iptables-save) prints; 0 when it fails.
count_rules() {
    n=$("$1" 2>/dev/null | grep -c '^-A' || true)
    echo "${n:-0}"
}
