"""One module per sub-command that is not training: infer, eval, export, deploy, app, demo, data, cache."""
