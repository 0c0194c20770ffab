"""Research workflows built on the stage scripts: three-stage training (:mod:`.three_stage`) and k-fold runs
(:mod:`.kfold`)."""
