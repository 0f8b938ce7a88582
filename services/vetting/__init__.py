"""Node vetting: a YAML profile of checks run on every node of an allocation (`srun strata vet --profile llm`)."""
