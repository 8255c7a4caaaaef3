"""The applications built on the library: stages, recipes and their pipeline, the plan, the
launcher, reports, the own-data recipe, the demo and the CLI."""
