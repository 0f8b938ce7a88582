"""Flush file caches (sync; drop_caches=3) so the job starts with the node's memory free."""

from services.prolog.caches import flush_caches


def run(ctx):
    return flush_caches(ctx.root)
