"""The walk of a storage tree, in worker processes, into an inventory."""
