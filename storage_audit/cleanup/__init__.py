"""Deletion plans and their apply: the safety rules once, a remover per backend."""
