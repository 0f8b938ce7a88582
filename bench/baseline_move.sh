#!/usr/bin/env bash
# The baseline of bench/bench_move.py: move nodes between two vClusters of a running local site by hand,
# with Slurm's own tools and nothing of strata, doing the same raw steps as `strata apply`:
#
#   drain ▸ wait until drained ▸ detach (source slurm.conf/gres.conf without the nodes, restart its
#   slurmctld by pid, reload the remaining slurmds, stop the moved slurmds by pid) ▸ reboot (reset the
#   node roots) ▸ admit (target confs with the nodes, restart its slurmctld, drain them, start their
#   slurmds, reload the members) ▸ resume once they respond.
#
# Slurm 22.05 must restart slurmctld to add or remove nodes (`scontrol reconfigure` alone is fatal then).
# Like strata (iac/plane.py, Plane.reload_slurmds), the members' slurmds then get SIGHUP (re-read the conf,
# register again) and we wait until they all respond.
# Assumes strata's rendered layout (`$STATE/vclusters/<v>/{etc,ctld}`, `$STATE/nodes/<n>/`) and
# partitions that span all members (no `nodes:` in the site file), which is what the bench site uses.
#
# usage: baseline_move.sh STATE_DIR SOURCE TARGET NODE...   (STATE_DIR = $STRATA_STATE/<site>)
# Prints one `STEP <name> <seconds>` line per step on stdout.
set -euo pipefail

state=$1 src=$2 dst=$3
shift 3
nodes=("$@")
list=$(IFS=,; echo "${nodes[*]}")
alt=$(IFS='|'; echo "${nodes[*]}")
sconf=$state/vclusters/$src/etc/slurm.conf
dconf=$state/vclusters/$dst/etc/slurm.conf
poll=0.05

now() { date +%s.%N; }
t0=$(now)
step() { local t; t=$(now); echo "STEP $1 $(echo "$t - $t0" | bc)"; t0=$t; }

sc() { local conf=$1; shift; SLURM_CONF=$conf "$@"; }

alive() {  # a pid counts as ended once it is a zombie (PID 1 reaps late here)
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [[ ${st%% *} != Z && ${st%% *} != X ]]
}

stop_pids() {  # SIGTERM, then wait until all have ended
    local p
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "$@"; do while alive "$p"; do sleep 0.01; done; done
}

restart_ctld() {  # restart a vCluster's slurmctld by pid, until it answers
    local v=$1 conf=$2 pid
    pid=$(cat "$state/vclusters/$v/ctld/slurmctld.pid")
    stop_pids "$pid"
    rm -f "$state/vclusters/$v/ctld/slurmctld.pid"
    slurmctld -f "$conf"
    until sc "$conf" scontrol ping >/dev/null 2>&1; do sleep 0.02; done
}

reload_slurmds() {  # SIGHUP every member's running slurmd; wait until they all respond
    local conf=$1 n pid hup=()
    for n in $(grep -oP '^NodeName=\K\S+' "$conf"); do
        pid=$(cat "$state/nodes/$n/slurmd.pid" 2>/dev/null) || continue
        if alive "$pid"; then kill -HUP "$pid"; hup+=("$n"); fi
    done
    [[ ${#hup[@]} -gt 0 ]] || return 0
    until ! sc "$conf" scontrol show node -o "$(IFS=,; echo "${hup[*]}")" |
            grep -q -E 'State=(UNKNOWN|DOWN)|NOT_RESPONDING'; do
        sleep $poll
    done
}

rewrite() {  # rewrite CONF GRES NODE_LINES GRES_LINES: members := current - $alt + given lines
    local conf=$1 gres=$2 add_nodes=$3 add_gres=$4 members hl
    {
        grep -v -E '^(NodeName|PartitionName)=' "$conf"
        { grep -E '^NodeName=' "$conf" | grep -v -E "^NodeName=($alt) " || true; printf '%s' "$add_nodes"; } | sort -V
    } >"$conf.new"
    members=$(grep -oP '^NodeName=\K\S+' "$conf.new" | paste -sd, || true)
    hl=$( [[ -n $members ]] && sc "$conf" scontrol show hostlist "$members" || true)
    grep -E '^PartitionName=' "$conf" |
        sed -E "s/ Nodes=\S+//; s/^(PartitionName=\S+)/\1${hl:+ Nodes=$hl}/" >>"$conf.new"
    { grep -v -E "^NodeName=($alt) " "$gres" || true; printf '%s' "$add_gres"; } >"$gres.new"
    mv "$gres.new" "$gres"
    mv "$conf.new" "$conf"
}

reboot_root() {  # reset the node root for the target, as the local driver does
    local n=$1 root=$state/nodes/$1/root new=$state/nodes/$1/root.new i
    rm -rf "$new"
    mkdir -p "$new/sys/kernel/mm/transparent_hugepage" "$new/proc/sys/vm" "$new/dev" "$new/run/strata" "$new/etc/strata"
    echo "[always] madvise never" >"$new/sys/kernel/mm/transparent_hugepage/enabled"
    echo "always defer defer+madvise [madvise] never" >"$new/sys/kernel/mm/transparent_hugepage/defrag"
    echo 0 >"$new/proc/sys/vm/drop_caches"
    for i in 0 1 2 3; do mknod -m 666 "$new/dev/nvidia$i" c 195 "$i"; done
    cp "$root/run/strata/gpus.json" "$new/run/strata/gpus.json"
    cp "$root/etc/strata/hardware.json" "$new/etc/strata/hardware.json"
    mkdir -m 1777 "$new/tmp"
    echo "{\"node\": \"$n\", \"vcluster\": \"$dst\", \"image\": \"$dst\"}" >"$new/etc/strata/boot.json"
    rm -rf "$state/nodes/$n/root.old"
    mv "$root" "$state/nodes/$n/root.old"
    mv "$new" "$root"
    rm -rf "$state/nodes/$n/root.old"
}

# 1. drain in the source
sc "$sconf" scontrol update NodeName="$list" State=DRAIN Reason="baseline: moving to $dst"
step drain

# 2. wait until drained: DRAIN set and nothing allocated or completing
until ! sc "$sconf" scontrol show node -o "$list" | grep -v -E 'State=\S*DRAIN' | grep -q . &&
      ! sc "$sconf" scontrol show node -o "$list" | grep -q -E 'State=(ALLOCATED|MIXED|COMPLETING)|COMPLETING'; do
    sleep $poll
done
step wait

# 3. detach: source confs without the nodes, restart its controller, stop the slurmds
node_lines=$(grep -E "^NodeName=($alt) " "$sconf")$'\n'
gres_lines=$(grep -E "^NodeName=($alt) " "${sconf%/*}/gres.conf")$'\n'
rewrite "$sconf" "${sconf%/*}/gres.conf" "" ""
restart_ctld "$src" "$sconf"
reload_slurmds "$sconf"
pids=()
for n in "${nodes[@]}"; do pids+=("$(cat "$state/nodes/$n/slurmd.pid")"); done
stop_pids "${pids[@]}"
step detach

# 4. reboot into the target's image
for n in "${nodes[@]}"; do reboot_root "$n"; done
step reboot

# 5. admit: target confs with the nodes, restart its controller, drain them, start their slurmds
rewrite "$dconf" "${dconf%/*}/gres.conf" "$node_lines" "$gres_lines"
restart_ctld "$dst" "$dconf"
sc "$dconf" scontrol update NodeName="$list" State=DRAIN Reason="baseline: moving to $dst"
for n in "${nodes[@]}"; do
    mkdir -p "$state/nodes/$n/spool" "$state/nodes/$n/log"
    echo "$dst" >"$state/nodes/$n/root/etc/strata/vcluster"
    rm -f "$state/nodes/$n/slurmd.pid"
    slurmd -f "$dconf" -N "$n"
done
for n in "${nodes[@]}"; do until [[ -s $state/nodes/$n/slurmd.pid ]]; do sleep 0.01; done; done
reload_slurmds "$dconf"
step admit

# 6. resume once every node responds in the target
until ! sc "$dconf" scontrol show node -o "$list" | grep -q -E 'State=(UNKNOWN|DOWN)|NOT_RESPONDING'; do
    sleep $poll
done
sc "$dconf" scontrol update NodeName="$list" State=RESUME
step resume
