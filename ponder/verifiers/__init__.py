"""Verifiers: programs that check an answer and return a Verdict."""
