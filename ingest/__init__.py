"""The write API: validate a batch, append it to the spool, answer 202."""
