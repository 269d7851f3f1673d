#!/usr/bin/env bash
# Several "hosts" on this machine, for trying multi-node launches of saferlhf: one Linux
# network namespace per node, each with its own interface and address (10.77.0.1, 10.77.0.2, ...)
# on a bridge that lives in a namespace of its own, so nothing is added to the host's network,
# and host names (n0, n1, ...) that resolve inside every node (ip netns exec bind-mounts
# /etc/netns/<namespace>/hosts over /etc/hosts).
#
#   bash bench/launch/netns.sh start                 # nodes n0 (10.77.0.1) and n1 (10.77.0.2)
#   RANK=0 ... bash bench/launch/netns.sh run 0 bin/saferlhf train-rm ...   # a command on node 0
#   RANK=1 ... bash bench/launch/netns.sh run 1 bin/saferlhf train-rm ...   # and on node 1
#   bash bench/launch/netns.sh cut 1                 # unplug node 1 (a network partition)
#   bash bench/launch/netns.sh stop                  # ends what still runs on the nodes, removes them
#
# Variables: NETNS_NODES (2), NETNS_PREFIX (saferlhf-n: namespaces saferlhf-n0, ..., saferlhf-nsw
# for the bridge; give each concurrent user its own), NETNS_HOSTS (n: host names n0, n1, ...),
# NETNS_SUBNET (10.77.0: node i is 10.77.0.<i+1>/24). Needs root and iproute2; `start` removes
# what it made when a step fails.
set -euo pipefail

NODES=${NETNS_NODES:-2}
PREFIX=${NETNS_PREFIX:-saferlhf-n}
HOSTS=${NETNS_HOSTS:-n}
SUBNET=${NETNS_SUBNET:-10.77.0}
SW=${PREFIX}sw

ns() { echo "${PREFIX}$1"; }

stop() {
	local n pids
	for n in $(seq 0 $((NODES - 1))) sw; do
		local name=${PREFIX}$n
		[[ -e /run/netns/$name ]] || continue
		# The processes still on the node: ours (started by `run`), ended by id.
		pids=$(ip netns pids "$name" 2>/dev/null || true)
		if [[ -n $pids ]]; then
			kill $pids 2>/dev/null || true
			for _ in $(seq 25); do
				pids=$(ip netns pids "$name" 2>/dev/null || true)
				[[ -z $pids ]] && break
				sleep 0.2
			done
			[[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
		fi
		ip netns del "$name" 2>/dev/null || true
	done
	for n in $(seq 0 $((NODES - 1))); do
		rm -rf "/etc/netns/$(ns "$n")"
	done
	rmdir /etc/netns 2>/dev/null || true
}

start() {
	command -v ip >/dev/null || { echo "netns: ip not found (apt-get install -y iproute2)" >&2; exit 1; }
	[[ $(id -u) == 0 ]] || { echo "netns: needs root (ip netns add)" >&2; exit 1; }
	stop
	trap 'echo "netns: start failed; removing what it made" >&2; stop' ERR
	ip netns add "$SW"
	ip -n "$SW" link set lo up
	ip -n "$SW" link add br0 type bridge
	ip -n "$SW" link set br0 up
	local hosts="127.0.0.1 localhost"$'\n'
	for n in $(seq 0 $((NODES - 1))); do
		hosts+="$SUBNET.$((n + 1)) $HOSTS$n"$'\n'
	done
	for n in $(seq 0 $((NODES - 1))); do
		local name
		name=$(ns "$n")
		ip netns add "$name"
		ip -n "$name" link set lo up
		# The node's end is eth0 in its namespace, the other end port$n on the bridge.
		ip -n "$SW" link add "port$n" type veth peer name eth0 netns "$name"
		ip -n "$SW" link set "port$n" master br0 up
		ip -n "$name" addr add "$SUBNET.$((n + 1))/24" dev eth0
		ip -n "$name" link set eth0 up
		mkdir -p "/etc/netns/$name"
		printf '%s' "$hosts" >"/etc/netns/$name/hosts"
	done
	# Every node reaches every other by name (the bridge may take a moment to forward).
	for n in $(seq 1 $((NODES - 1))); do
		local ok=
		for _ in $(seq 50); do
			# A TCP connection to a closed port: refused means n is there (no ping needed).
			local probe
			probe=$(ip netns exec "$(ns 0)" timeout 1 bash -c "exec 3<>/dev/tcp/$HOSTS$n/9" 2>&1 || true)
			if [[ $probe == *refused* ]]; then ok=1; break; fi
			sleep 0.1
		done
		[[ -n $ok ]] || { echo "netns: $HOSTS$n ($SUBNET.$((n + 1))) does not answer from $HOSTS""0" >&2; false; }
	done
	trap - ERR
	echo "netns: up: $(for n in $(seq 0 $((NODES - 1))); do printf '%s=%s(%s) ' "$(ns "$n")" "$HOSTS$n" "$SUBNET.$((n + 1))"; done)"
}

case ${1:-} in
start) start ;;
stop) stop ;;
run)
	[[ $# -ge 3 ]] || { echo "usage: $0 run NODE COMMAND..." >&2; exit 2; }
	node=$2
	shift 2
	exec ip netns exec "$(ns "$node")" "$@"
	;;
cut)
	[[ $# -eq 2 ]] || { echo "usage: $0 cut NODE" >&2; exit 2; }
	# Deleting the bridge's end of the node's veth pair deletes both ends: the node's
	# processes keep running with no route to anyone.
	ip -n "$SW" link del "port$2"
	;;
*) echo "usage: $0 start|run NODE COMMAND...|cut NODE|stop" >&2; exit 2 ;;
esac
