#!/bin/sh
# Init container of the weave-net DaemonSet (nodeimage test image): checks the kernel
# features Weave Net and its network policy controller need, then installs the CNI
# plugin and its configuration on the host.
#
# Environment: HOST_ROOT (/host: the host's /opt, /home and /etc are mounted below it),
# EXPECT_NPC (1: weave-npc runs, so xt_set is required), HAIRPIN_MODE (true),
# WEAVE_VERSION (the image's version; names the plugin file), IPTABLES_BACKEND.
set -eu
[ -z "${WEAVE_DEBUG:-}" ] || set -x
# shellcheck source=common.sh
. /usr/lib/weave-test/common.sh

HOST_ROOT=${HOST_ROOT:-/host}
EXPECT_NPC=${EXPECT_NPC:-1}
HAIRPIN_MODE=${HAIRPIN_MODE:-true}
VERSION=${WEAVE_VERSION:-latest}
PLUGIN=weave-plugin-$VERSION

# `-m set` works: an ipset matched from an iptables rule (the kernel has xt_set).
check_xt_set() {
    set_name=weave-init-test
    chain=WEAVE-INIT-TEST
    iptables -w -F "$chain" 2>/dev/null || true
    iptables -w -X "$chain" 2>/dev/null || true
    ipset destroy "$set_name" 2>/dev/null || true
    ipset create "$set_name" hash:ip
    iptables -w -N "$chain"
    ok=1
    iptables -w -A "$chain" -m set --match-set "$set_name" src -j DROP || ok=0
    iptables -w -F "$chain"
    iptables -w -X "$chain"
    # The kernel lets go of the set a moment after the rule is gone.
    tries=0
    until ipset destroy "$set_name" 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -ge 10 ]; then
            log "could not destroy the test ipset $set_name"
            break
        fi
        sleep 1
    done
    if [ "$ok" != 1 ]; then
        log "iptables cannot match ipsets (-m set): the kernel lacks xt_set, which weave-npc needs (set EXPECT_NPC=0 to run without it)"
        return 1
    fi
}

# Writes $2 to $1 through a temporary file and a rename.
write_file() {
    tmp="$1.tmp.$$"
    printf '%s\n' "$2" >"$tmp"
    mv -f "$tmp" "$1"
}

# Points the link $1/$2 at $PLUGIN (a relative link), replacing whatever is there.
plugin_link() {
    if [ "$(readlink "$1/$2" 2>/dev/null || true)" != "$PLUGIN" ]; then
        rm -f "$1/$2.tmp"
        ln -s "$PLUGIN" "$1/$2.tmp"
        mv -f "$1/$2.tmp" "$1/$2"
    fi
}

case $HAIRPIN_MODE in
    true | false) ;;
    *)
        log "HAIRPIN_MODE=$HAIRPIN_MODE: expected true or false"
        exit 1
        ;;
esac

choose_iptables_backend

if [ "$EXPECT_NPC" != 0 ]; then
    for module in br_netfilter xt_set; do
        modprobe "$module" 2>/dev/null || log "modprobe $module failed (fine when it is built into the kernel)"
    done
    check_xt_set
fi

# kube-proxy and weave-npc need bridged traffic to pass through iptables.
bridge_nf=/proc/sys/net/bridge/bridge-nf-call-iptables
if [ -r "$bridge_nf" ]; then
    if [ "$(cat "$bridge_nf")" != 1 ]; then
        echo 1 >"$bridge_nf"
    fi
else
    log "no $bridge_nf (br_netfilter missing): network policy and kube-proxy may not work"
fi

# The CNI plugin is weaveutil itself: it acts as the weave-net plugin or the weave-ipam
# plugin according to the name it is run by. kube-up's GCI hosts keep plugins in
# /home/kubernetes/bin, the fallback when /opt cannot be written.
bin_dir=$HOST_ROOT/opt/cni/bin
if ! mkdir -p "$bin_dir" 2>/dev/null; then
    bin_dir=$HOST_ROOT/home/kubernetes/bin
    if ! mkdir -p "$bin_dir"; then
        log "cannot create $HOST_ROOT/opt/cni/bin nor $bin_dir: the CNI plugin is not installed"
        exit 1
    fi
fi
if ! cmp -s /usr/bin/weaveutil "$bin_dir/$PLUGIN"; then
    cp /usr/bin/weaveutil "$bin_dir/.$PLUGIN.tmp"
    chmod 0755 "$bin_dir/.$PLUGIN.tmp"
    mv -f "$bin_dir/.$PLUGIN.tmp" "$bin_dir/$PLUGIN"
fi
for name in weave-net weave-ipam; do
    plugin_link "$bin_dir" "$name"
done
log "CNI plugin $bin_dir/$PLUGIN (weave-net, weave-ipam)"

# The network configuration: weave-net, then portmap for hostPort. An existing file is
# left alone (an operator may have changed it); a pre-2.5 10-weave.conf is removed.
conf_dir=$HOST_ROOT/etc/cni/net.d
mkdir -p "$conf_dir"
rm -f "$conf_dir/10-weave.conf"
if [ ! -f "$conf_dir/10-weave.conflist" ]; then
    write_file "$conf_dir/10-weave.conflist" "{
    \"cniVersion\": \"1.0.0\",
    \"name\": \"weave\",
    \"disableCheck\": true,
    \"plugins\": [
        {
            \"name\": \"weave\",
            \"type\": \"weave-net\",
            \"hairpinMode\": $HAIRPIN_MODE
        },
        {
            \"type\": \"portmap\",
            \"capabilities\": {\"portMappings\": true},
            \"snat\": true
        }
    ]
}"
    log "wrote $conf_dir/10-weave.conflist"
fi
