"""One module per stage, each runnable as `python -m alignment.stages.<name> --config <pipeline.yaml>`."""
