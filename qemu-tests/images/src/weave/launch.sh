#!/bin/sh
# Container `weave` of the weave-net DaemonSet (nodeimage test image): starts the Weave
# Net router (weaver) for Kubernetes. Runs init.sh first unless INIT_CONTAINER=true
# (the DaemonSet's init container did that already).
#
# Environment (defaults in brackets):
#   IPALLOC_RANGE [10.32.0.0/12]    pod network
#   WEAVE_HTTP_ADDR [127.0.0.1:6784] control API (the readiness probe's /status)
#   WEAVE_METRICS_ADDR [0.0.0.0:6782]
#   WEAVE_STATUS_ADDR []            status endpoint, only when set
#   HOST_ROOT [/host]  CONN_LIMIT [200]  DB_PREFIX [/weavedb/weave-net]
#   EXPECT_NPC [1]  NO_MASQ_LOCAL [1]  WEAVE_MTU []  WEAVE_NO_FASTDP []
#   KUBE_PEERS [from kube-utils]  IPALLOC_INIT [consensus=<number of peers>]
#   WEAVE_PASSWORD                  read by weaver itself (encrypts peer traffic)
#   EXTRA_ARGS                      weaver flags, word-split, passed first
#   WEAVE_EXPOSE_IP []              address of the host on the pod network (else IPAM's)
#   HOSTNAME                        the node's name (the DaemonSet sets spec.nodeName)
# The container's arguments go to weaver after these flags, before the peers.
set -eu
[ -z "${WEAVE_DEBUG:-}" ] || set -x
# shellcheck source=common.sh
. /usr/lib/weave-test/common.sh

[ "${INIT_CONTAINER:-}" = true ] || /home/weave/init.sh

IPALLOC_RANGE=${IPALLOC_RANGE:-10.32.0.0/12}
HTTP_ADDR=${WEAVE_HTTP_ADDR:-127.0.0.1:6784}
METRICS_ADDR=${WEAVE_METRICS_ADDR:-0.0.0.0:6782}
STATUS_ADDR=${WEAVE_STATUS_ADDR:-}
HOST_ROOT=${HOST_ROOT:-/host}
CONN_LIMIT=${CONN_LIMIT:-200}
DB_PREFIX=${DB_PREFIX:-/weavedb/weave-net}
EXPECT_NPC=${EXPECT_NPC:-1}
NO_MASQ_LOCAL=${NO_MASQ_LOCAL:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}
# shellcheck disable=SC3028 # HOSTNAME comes from the DaemonSet (spec.nodeName), not the shell
NODE_NAME=${HOSTNAME:-}
WEAVER=/home/weave/weaver
KUBE_UTILS=/home/weave/kube-utils
export CHECKPOINT_DISABLE="${CHECKPOINT_DISABLE:-1}"

choose_iptables_backend

# The pod network must not overlap a route the host already has.
/usr/bin/weaveutil netcheck "$IPALLOC_RANGE" weave

# The initial peers: every node's address, from the API server.
if [ -z "${KUBE_PEERS:-}" ]; then
    if ! KUBE_PEERS=$("$KUBE_UTILS"); then
        log "could not list the peers (kube-utils failed)"
        exit 1
    fi
fi
# shellcheck disable=SC2086 # one word per peer
set_count() { echo $#; }
# shellcheck disable=SC2086
IPALLOC_INIT=${IPALLOC_INIT:-consensus=$(set_count $KUBE_PEERS)}

# The peer name is kept in the database (or derived from the host's machine id).
# shellcheck disable=SC2086 # EXTRA_ARGS are words
PEERNAME=$("$WEAVER" $EXTRA_ARGS --print-peer-name --host-root="$HOST_ROOT" --db-prefix="$DB_PREFIX")
if [ -z "$PEERNAME" ]; then
    log "weaver printed no peer name"
    exit 2
fi

# Peer reclaim: when another node removed this peer from the cluster's list while it
# was away, its saved IPAM data would clash with the cluster's: start afresh.
if [ -f "${DB_PREFIX}data.db" ] &&
    /usr/bin/weaveutil get-db-flag "$DB_PREFIX" peer-reclaim >/dev/null &&
    "$KUBE_UTILS" -check-peer-new -peer-name="$PEERNAME" -log-level=debug; then
    log "peer $PEERNAME is not in the cluster's peer list: removing its saved data"
    rm -f "${DB_PREFIX}data.db"
fi
# Set before weaver starts: the database takes one process at a time.
/usr/bin/weaveutil set-db-flag "$DB_PREFIX" peer-reclaim ok

# Calls the weaver's HTTP API: weave_api METHOD PATH; prints the body, fails on non-2xx.
weave_api() {
    curl -fsS --connect-timeout 3 -X "$1" "http://$HTTP_ADDR$2"
}

# Gives the host an address on the pod network (the weave bridge) and masquerades
# traffic from the host to pods: `weave expose`. The address is IPAM's unless
# WEAVE_EXPOSE_IP names one (CIDR, ip:CIDR or net:SUBNET).
expose() {
    case ${WEAVE_EXPOSE_IP:-} in
        "") cidr=$(weave_api POST /ip/weave:expose) ;;
        net:*) cidr=$(weave_api POST "/ip/weave:expose/${WEAVE_EXPOSE_IP#net:}") ;;
        *)
            cidr=${WEAVE_EXPOSE_IP#ip:}
            weave_api PUT "/ip/weave:expose/$cidr" >/dev/null
            ;;
    esac
    weave_api POST "/expose/$cidr" >/dev/null
    log "exposed the host as $cidr"
}

# After the weaver answers: reclaim the IP space of removed peers, expose the host,
# mark the node's network ready, then keep reclaiming in the background.
post_start() {
    until weave_api GET /status >/dev/null 2>&1; do
        sleep 1
    done
    "$KUBE_UTILS" -reclaim -node-name="$NODE_NAME" -peer-name="$PEERNAME" -log-level=debug || true
    expose || log "weave expose failed"
    "$KUBE_UTILS" -set-node-status -node-name="$NODE_NAME" || log "setting the node's NetworkUnavailable condition failed"
    exec "$KUBE_UTILS" -run-reclaim-daemon -node-name="$NODE_NAME" -peer-name="$PEERNAME" -log-level=debug
}
post_start &

# weaver's arguments, built back to front: peers last, the container's own arguments
# before them, our flags before those, EXTRA_ARGS first.
# shellcheck disable=SC2086 # one word per peer
for peer in $KUBE_PEERS; do
    set -- "$@" "$peer"
done
[ "$NO_MASQ_LOCAL" = 0 ] || set -- --no-masq-local "$@"
[ "$EXPECT_NPC" = 0 ] || set -- --expect-npc "$@"
set -- --ipalloc-range="$IPALLOC_RANGE" --ipalloc-init="$IPALLOC_INIT" --conn-limit="$CONN_LIMIT" "$@"
[ -z "$NODE_NAME" ] || set -- --nickname="$NODE_NAME" "$@"
set -- --docker-api= --no-dns --db-prefix="$DB_PREFIX" "$@"
[ -z "$STATUS_ADDR" ] || set -- --status-addr="$STATUS_ADDR" "$@"
set -- --name="$PEERNAME" --http-addr="$HTTP_ADDR" --metrics-addr="$METRICS_ADDR" "$@"
[ -z "${WEAVE_NO_FASTDP:-}" ] || set -- --no-fastdp "$@"
[ -z "${WEAVE_MTU:-}" ] || set -- --mtu="$WEAVE_MTU" "$@"
set -- --port=6783 --datapath=datapath "$@"
# shellcheck disable=SC2086 # EXTRA_ARGS are words
set -- $EXTRA_ARGS "$@"
log "starting weaver $*"
exec "$WEAVER" "$@"
