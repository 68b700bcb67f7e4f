"""From a collated batch to what a loss reads: per-sequence (and, where a loss declares it, per-token)
log-probs of the policy and the reference.

- ``logps.py``: ``SequenceScorer``, the one forward that sums completion-token log-probs (head applied only
  where needed, prompts shared by chosen and rejected, batches packed without padding).
- ``layout.py``: where each token goes in the decoder's input (shared prompts, packed rows) and the attention
  mask each attention implementation gets for it.
- ``inputs.py``: ``score_batch``, which scores a batch with policy and reference into ``PairLogps`` /
  ``UnpairedLogps`` and adds exactly the extra inputs the configured losses declared
  (``LossSpec.required_inputs``): per-token log-probs, WPO's normalizer, KTO's mismatched pairs.

The losses themselves (``prefopt.losses``) never run a model: they are pure functions of these tensors.
"""

from prefopt.scoring.inputs import check_inputs, required_inputs, score_batch
from prefopt.scoring.layout import build_layout
from prefopt.scoring.logps import SequenceScorer, completion_logps_from_logits

__all__ = ["SequenceScorer", "build_layout", "check_inputs", "completion_logps_from_logits", "required_inputs",
           "score_batch"]
