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
# And a Slurm cluster across the nodes (Debian's slurmctld, slurmd, slurm-client and munge, as for
# slurm-local.sh): slurmctld on n0, a slurmd on every node, munged outside, everything they write
# in $NETNS_SLURM_DIR (/tmp/saferlhf-netns-slurm); `stop` ends them too.
#
#   bash bench/launch/netns.sh slurm-start
#   SLURM_CONF=/tmp/saferlhf-netns-slurm/slurm.conf bash bench/launch/netns.sh run 0 \
#       srun --nodes 2 --ntasks-per-node 1 bin/saferlhf train-rm ...
#
# And Open MPI's mpirun across the nodes, with `rsh` as its remote shell (in place of ssh: the
# command runs on the node named n<i> or <subnet>.<i+1>):
#
#   bash bench/launch/netns.sh run 0 mpirun --allow-run-as-root -H n0,n1 -np 2 \
#       --mca plm_rsh_agent "$PWD/bench/launch/netns.sh rsh" -x MASTER_ADDR=n0 bin/saferlhf train-rm ...
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
SLURM_DIR=${NETNS_SLURM_DIR:-/tmp/saferlhf-netns-slurm}

ns() { echo "${PREFIX}$1"; }

stop() {
	local n pids
	# munged runs outside the nodes; the Slurm daemons on them end with the nodes' processes.
	if [[ -f $SLURM_DIR/munged.pid ]]; then
		kill "$(cat "$SLURM_DIR/munged.pid")" 2>/dev/null || true
		rm -f "$SLURM_DIR/munged.pid"
	fi
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

# on NODE COMMAND: a daemon on a node. Unlike `ip netns exec`, which mounts a new /sys (and so
# hides /sys/fs/cgroup, without which slurmd does not start), it enters only the node's network,
# with the node's host name and /etc/hosts in mount and UTS namespaces of its own.
on() {
	local node=$1
	shift
	nsenter --net="/run/netns/$(ns "$node")" unshare --mount --uts bash -c \
		'mount --bind "/etc/netns/$0/hosts" /etc/hosts && hostname "$1" && shift && exec "$@"' "$(ns "$node")" "$HOSTS$node" "$@"
}

slurm_start() {
	for c in munged mungekey slurmctld slurmd srun sinfo nsenter unshare; do
		command -v "$c" >/dev/null || { echo "netns: $c not found (apt-get install -y slurmctld slurmd slurm-client)" >&2; exit 1; }
	done
	[[ -e /run/netns/$(ns 0) ]] || { echo "netns: no nodes (run $0 start first)" >&2; exit 1; }
	local n
	mkdir -p "$SLURM_DIR"/{state,munge}
	rm -rf "$SLURM_DIR"/state/*
	chmod 700 "$SLURM_DIR/munge"
	[[ -f $SLURM_DIR/munge/munge.key ]] || mungekey --create --keyfile "$SLURM_DIR/munge/munge.key"
	munged --force --key-file "$SLURM_DIR/munge/munge.key" --socket "$SLURM_DIR/munge/munge.socket" \
		--pid-file "$SLURM_DIR/munged.pid" --log-file "$SLURM_DIR/munged.log" --seed-file "$SLURM_DIR/munge/munge.seed"
	{
		cat <<CONF
ClusterName=netns
SlurmctldHost=${HOSTS}0($SUBNET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SLURM_DIR/munge/munge.socket
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool-%n
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd-%n.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd-%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
CONF
		for n in $(seq 0 $((NODES - 1))); do
			echo "NodeName=$HOSTS$n NodeAddr=$SUBNET.$((n + 1)) CPUs=$(nproc) State=UNKNOWN"
		done
		echo "PartitionName=nodes Nodes=${HOSTS}[0-$((NODES - 1))] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
	} >"$SLURM_DIR/slurm.conf"
	on 0 slurmctld -f "$SLURM_DIR/slurm.conf"
	for n in $(seq 0 $((NODES - 1))); do
		mkdir -p "$SLURM_DIR/spool-$HOSTS$n"
		on "$n" slurmd -N "$HOSTS$n" -f "$SLURM_DIR/slurm.conf"
	done
	local idle=
	for _ in $(seq 100); do
		idle=$(SLURM_CONF=$SLURM_DIR/slurm.conf ip netns exec "$(ns 0)" sinfo -h -N -o %T 2>/dev/null | grep -cx idle || true)
		[[ $idle == "$NODES" ]] && break
		sleep 0.2
	done
	if [[ $idle != "$NODES" ]]; then
		echo "netns: $idle of $NODES Slurm nodes came up; logs in $SLURM_DIR:" >&2
		tail -n 5 "$SLURM_DIR"/*.log >&2 || true
		exit 1
	fi
	echo "netns: Slurm up on ${HOSTS}[0-$((NODES - 1))]; export SLURM_CONF=$SLURM_DIR/slurm.conf"
}

case ${1:-} in
start) start ;;
slurm-start) slurm_start ;;
stop) stop ;;
run)
	[[ $# -ge 3 ]] || { echo "usage: $0 run NODE COMMAND..." >&2; exit 2; }
	node=$2
	shift 2
	exec ip netns exec "$(ns "$node")" "$@"
	;;
rsh)
	# mpirun's remote shell: "rsh HOST WORDS..." runs the words as one shell command on HOST, as ssh does.
	[[ $# -ge 3 ]] || { echo "usage: $0 rsh HOST COMMAND..." >&2; exit 2; }
	host=$2
	shift 2
	case $host in
	"$HOSTS"[0-9]*) node=${host#"$HOSTS"} ;;
	"$SUBNET".[0-9]*) node=$((${host##*.} - 1)) ;;
	*) echo "netns: rsh: $host is not a node ($HOSTS<i> or $SUBNET.<i+1>)" >&2; exit 255 ;;
	esac
	exec ip netns exec "$(ns "$node")" sh -c "$*"
	;;
cut)
	[[ $# -eq 2 ]] || { echo "usage: $0 cut NODE" >&2; exit 2; }
	# Deleting the bridge's end of the node's veth pair deletes both ends: the node's
	# processes keep running with no route to anyone.
	ip -n "$SW" link del "port$2"
	;;
*) echo "usage: $0 start|slurm-start|run NODE COMMAND...|rsh HOST COMMAND...|cut NODE|stop" >&2; exit 2 ;;
esac
