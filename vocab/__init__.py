"""The shared vocabulary at the bottom of strata: the site model, the state-dir layout, the one place that
writes managed files, and the one validation-error explainer. Pure data + validation; it imports nothing of
ours, and every layer (iac, services, user_envs, workloads) may import it."""
