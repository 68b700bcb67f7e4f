"""Online and iterative preference optimization (issue 13): sampled completions become preference pairs.

``pairs.py`` builds pairs from k labelled samples of a prompt (best-vs-worst, random, all pairs; ties and
unlabelled samples dropped and counted). The labellers live in ``prefopt.labellers``.
"""
