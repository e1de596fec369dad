#!/usr/bin/env bash
# The real services tests/test_cluster.py needs, on a clean Debian machine, as root:
#   - a single-node Slurm cluster (munged, slurmctld, slurmd) from Debian's slurm-wlm and munge;
#   - an sshd on 127.0.0.1, on a free port, with a host key and a client key made for the tests.
# Idempotent: what already runs is left running. .ci/run calls it before the tests; a test
# fixture calls it too where the services are missing and the user is root.
# It writes what the tests need to $ENVRUNNER_SERVICES (default /tmp/envrunner-services):
#   ssh_port, ssh_key (the client's private key), ssh_config (an ssh -F file for 127.0.0.1).
set -euo pipefail

out=${ENVRUNNER_SERVICES:-/tmp/envrunner-services}
if [ "$(id -u)" != 0 ]; then
    echo ".ci/services.sh: must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

need=()
for tool in slurmctld slurmd munged sshd; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing slurm-wlm munge openssh-server (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge openssh-server >/dev/null
fi
export PATH="/usr/sbin:/sbin:$PATH"

# ------------------------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0600 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
    runuser -u munge -- munged
fi

# ------------------------------------------------------------------------------- slurm
host=$(hostname -s)
conf=/etc/slurm/slurm.conf
if [ ! -f "$conf" ] || ! grep -q '^# envrunner single-node test cluster' "$conf"; then
    mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    # CPUs=8 on a smaller machine (config_overrides): tests run a few one-CPU jobs at once.
    cat >"$conf" <<EOF
# envrunner single-node test cluster (.ci/services.sh)
ClusterName=envrunner
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=8 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
fi
if ! scontrol ping 2>/dev/null | grep -q UP; then
    slurmctld
fi
if ! pgrep -x slurmd >/dev/null; then
    slurmd
fi
deadline=$((SECONDS + 30))
until sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; do
    if [ $SECONDS -ge $deadline ]; then
        echo ".ci/services.sh: the Slurm node did not come up:" >&2
        sinfo >&2 || true
        tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
        exit 1
    fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 0.5
done

# ------------------------------------------------------------------------------- sshd
mkdir -p "$out"
chmod 0700 "$out"
if [ -f "$out/sshd.pid" ] && kill -0 "$(cat "$out/sshd.pid")" 2>/dev/null; then
    :
else
    ssh-keygen -A >/dev/null
    [ -f "$out/ssh_key" ] || ssh-keygen -q -t ed25519 -N '' -C envrunner-test -f "$out/ssh_key"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
    cp "$out/ssh_key.pub" "$out/authorized_keys"
    chmod 0600 "$out/authorized_keys"
    cat >"$out/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile $out/sshd.pid
AuthorizedKeysFile $out/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
EOF
    /usr/sbin/sshd -f "$out/sshd_config"
    echo "$port" >"$out/ssh_port"
    cat >"$out/ssh_config" <<EOF
Host envrunner-test 127.0.0.1
    HostName 127.0.0.1
    Port $port
    User root
    IdentityFile $out/ssh_key
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
EOF
fi
deadline=$((SECONDS + 15))
until ssh -F "$out/ssh_config" envrunner-test true 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
        echo ".ci/services.sh: ssh to 127.0.0.1:$(cat "$out/ssh_port") does not work:" >&2
        ssh -F "$out/ssh_config" envrunner-test true >&2 || true
        exit 1
    fi
    sleep 0.2
done
echo "services up: slurm ($(sinfo -h -o '%N %T')), sshd on 127.0.0.1:$(cat "$out/ssh_port") ($out)"
