"""Training and evaluation of KuDA, independent of MMSA's run loop: stage 1, the stage-2
trainer (MMSA's do_train/do_test protocol), checkpoints and their fingerprints, precision,
and evaluation over a split."""
