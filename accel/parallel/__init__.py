"""Multi-process worker groups: Ulysses sequence parallel x CFG parallel, one process per GPU."""
