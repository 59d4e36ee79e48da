"""Tools for trying outlast on one machine: a local gateway with a hard timeout, and `outlast demo`."""
