"""Run a list of recipe runs to completion, a few at a time, across interruptions.

    python recipes/campaign.py status                 # every run of the campaign and its state
    python recipes/campaign.py run --jobs 2           # start or resume what is not finished
    python recipes/campaign.py run --print            # the commands only (for SLURM, etc.)
    python recipes/campaign.py collect                # copy each run's eval.csv into the docs
    python recipes/campaign.py report                 # figures + tables from the copied CSVs

The same ``main`` as the ``dqs-campaign`` command (``dqs_torchrl/experiments/campaign.py``);
the campaign of the results page is ``dqs_torchrl/experiments/configs/campaign/results.yaml``.
Run it from the repository root: ``collect`` and ``report`` default to
``docs/results/campaign``.
"""

from dqs_torchrl.experiments.campaign import main

if __name__ == "__main__":
    main()
