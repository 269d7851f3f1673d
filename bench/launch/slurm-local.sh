#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying `srun` launches of saferlhf:
#
#   bash bench/launch/slurm-local.sh start   # writes $SLURM_LOCAL_DIR/slurm.conf, starts munged, slurmctld, slurmd
#   export SLURM_CONF=/tmp/slurm-local/slurm.conf
#   srun -n 2 bin/saferlhf train-rm ...
#   bash bench/launch/slurm-local.sh stop
#
# Needs Debian's slurmctld, slurmd, slurm-client and munge (apt-get install -y slurmctld slurmd
# slurm-client; munge comes with them) and root (the daemons run as root). Everything the daemons
# write (configuration, state, spool, logs, munge key and socket) stays in $SLURM_LOCAL_DIR.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
HOST=$(hostname -s)
CPUS=$(nproc)

stop() {
	for p in slurmd slurmctld munged; do
		if [[ -f $DIR/$p.pid ]]; then
			local pid
			pid=$(cat "$DIR/$p.pid")
			if kill "$pid" 2>/dev/null; then
				for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
			fi
			rm -f "$DIR/$p.pid"
		fi
	done
}

start() {
	for c in munged mungekey slurmctld slurmd srun sinfo; do
		command -v "$c" >/dev/null || { echo "slurm-local: $c not found (apt-get install -y slurmctld slurmd slurm-client)" >&2; exit 1; }
	done
	stop
	mkdir -p "$DIR"/{state,spool,munge}
	chmod 700 "$DIR/munge"
	[[ -f $DIR/munge/munge.key ]] || mungekey --create --keyfile "$DIR/munge/munge.key"
	munged --force --key-file "$DIR/munge/munge.key" --socket "$DIR/munge/munge.socket" \
		--pid-file "$DIR/munged.pid" --log-file "$DIR/munged.log" --seed-file "$DIR/munge/munge.seed"
	cat >"$DIR/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
	export SLURM_CONF=$DIR/slurm.conf
	slurmctld -f "$SLURM_CONF"
	slurmd -f "$SLURM_CONF"
	for _ in $(seq 50); do
		if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
			echo "slurm-local: up ($HOST, $CPUS CPUs); export SLURM_CONF=$SLURM_CONF"
			return
		fi
		sleep 0.2
	done
	echo "slurm-local: the node did not come up; logs in $DIR:" >&2
	tail -n 20 "$DIR"/slurmctld.log "$DIR"/slurmd.log >&2 || true
	exit 1
}

case ${1:-} in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
