"""Integrations with other training engines, each in its own module and installed through its own extra.

``import tricklab`` never imports them; importing one without its engine fails in one line that names the extra:

=============================================  ===========================  =====================================
module                                         what                         install
=============================================  ===========================  =====================================
:mod:`tricklab.integrations.lightning`         ``TrickLabDoctor``: the      ``pip install 'tricklab[lightning]'``
                                               doctor as a Lightning
                                               callback
:mod:`tricklab.integrations.loggers`           ``train.loggers`` /          ``pip install 'tricklab[tensorboard]'``
                                               ``--logger``: runs, doctors  (``[mlflow]``, ``[wandb]``)
                                               and labs in TensorBoard,
                                               MLflow, W&B
=============================================  ===========================  =====================================
"""
