"""The drain: spool → coalesce → sink → trim."""
