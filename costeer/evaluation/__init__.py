"""Evaluation: `python -m costeer eval` (methods, ROUGE-L, sweeps), what the cloud can learn (privacy
measures, the persona-guessing attacker, the audit), and the statistics both use."""
