"""ppp: gradient leakage, PRECODE, the targeted attack and PPP as a tested library.

The library never imports Snakemake; the workflow's scripts are thin glue around it.
"""

__version__ = "0.1.0"
