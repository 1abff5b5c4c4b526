#!/bin/sh
# Container `weave-npc` of the weave-net DaemonSet (nodeimage test image): the Weave
# Net network policy controller. weave-npc starts ulogd itself (`/usr/sbin/ulogd -v`,
# configured by /etc/ulogd.conf: packets the policy drops arrive on NFLOG group 86 and
# are written as pcap to the FIFO /var/log/ulogd.pcap, which weave-npc reads and logs).
# Arguments go to weave-npc. IPTABLES_BACKEND as for the weave container.
set -eu
[ -z "${WEAVE_DEBUG:-}" ] || set -x
# shellcheck source=common.sh
. /usr/lib/weave-test/common.sh

export CHECKPOINT_DISABLE="${CHECKPOINT_DISABLE:-1}"
choose_iptables_backend

fifo=/var/log/ulogd.pcap
mkdir -p /var/log
if [ ! -p "$fifo" ]; then
    rm -f "$fifo"
    mkfifo -m 0600 "$fifo"
fi
exec /usr/bin/weave-npc "$@"
