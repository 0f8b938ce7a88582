/*
 * strata SPANK plugin: `srun --environment=NAME ...` runs each task in the container of EDF NAME.
 *
 * plugstack.conf (per vCluster, next to its slurm.conf):
 *   required /path/strata_spank.so python=/path/to/venv/bin/python config=/path/engine.json
 * slurm_spank_init registers the option in every context (srun, sbatch, salloc, slurmstepd), so the clients
 * accept it and its value reaches the node. In slurm_spank_task_init (the task process, after Slurm set up
 * the task's environment, just before it would exec the command) the plugin execs the strata engine
 * instead, with the task's argv and environment: the engine runs the command in the container, so the
 * task's stdio, signals and exit status stay Slurm's.
 * `#SBATCH --environment=NAME`: the batch script itself stays on the host (it calls srun and scontrol);
 * Slurm exports the option to the job, so every `srun` step in it runs in the container.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdint.h>
#include <slurm/spank.h>

#define BATCH_STEP 0xfffffffb /* SLURM_BATCH_SCRIPT in slurm.h */

SPANK_PLUGIN(strata_environment, 1);

static char *environment = NULL;
static const char *python = NULL, *config = NULL;

static int set_environment(int val, const char *optarg, int remote)
{
    (void)val; (void)remote;
    if (!optarg || !*optarg) {
        slurm_error("strata: --environment needs an EDF name or path");
        return -1;
    }
    free(environment);
    environment = strdup(optarg);
    return 0;
}

static struct spank_option options[] = {
    {"environment", "NAME", "Run the tasks in the container described by EDF NAME (strata; see EDF_PATH).",
     1, 0, set_environment},
    SPANK_OPTIONS_TABLE_END
};

int slurm_spank_init(spank_t sp, int ac, char **av)
{
    for (int i = 0; i < ac; i++) {
        if (!strncmp(av[i], "python=", 7)) python = av[i] + 7;
        else if (!strncmp(av[i], "config=", 7)) config = av[i] + 7;
    }
    return spank_option_register(sp, options);
}

int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
    int argc = 0;
    char **argv = NULL, **env = NULL;
    (void)ac; (void)av;
    uint32_t step = 0;
    if (!environment)
        return 0;
    if (spank_get_item(sp, S_JOB_STEPID, &step) == ESPANK_SUCCESS && step == BATCH_STEP)
        return 0;
    if (!python || !config) {
        slurm_error("strata: plugstack.conf must give python= and config=");
        return -1;
    }
    if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_ENV, &env) != ESPANK_SUCCESS) {
        slurm_error("strata: cannot read the task's argv/environment");
        return -1;
    }
    char **cmd = calloc(argc + 10, sizeof(char *));
    int n = 0;
    cmd[n++] = (char *)python;
    cmd[n++] = "-m";
    cmd[n++] = "user_envs.run";
    cmd[n++] = "--config";
    cmd[n++] = (char *)config;
    cmd[n++] = "--environment";
    cmd[n++] = environment;
    cmd[n++] = "--";
    for (int i = 0; i < argc; i++)
        cmd[n++] = argv[i];
    cmd[n] = NULL;
    execve(python, cmd, env);
    slurm_error("strata: exec %s failed: %m", python);
    return -1;
}
