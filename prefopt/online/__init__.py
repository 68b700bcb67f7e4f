"""Online and iterative preference optimization (issue 13): the policy's own samples become preference pairs.

    pairs.py      pairs from k labelled samples of a prompt (best-vs-worst, random, all pairs; ties counted)
    labelling.py  the gold scorer, and labelling a round's or a step's samples with any labeller
    online.py     regime=online: fresh pairs at every optimizer step, inside the training loop
    rounds.py     regime=iterative and regime=spin: rounds of sampling, labelling and training; trainer_for()

The labellers live in ``prefopt.labellers``. This ``__init__`` imports nothing, so that the trainer's set-up can
import ``online.py`` without reaching the rounds, which import the trainer.
"""
