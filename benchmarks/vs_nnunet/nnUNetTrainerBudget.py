"""nnU-Net v2 trainer limited to a wall-clock budget; copied by ``benchmarks/vs_nnunet.py`` into the installed
``nnunetv2/training/nnUNetTrainer/variants/`` folder, where nnU-Net finds trainers by class name.

The clock starts when ``run_training`` starts, so the budget covers what nnU-Net does before its first step
(network and data loaders built, preprocessed data unpacked) and every epoch with its validation. After each
epoch the number of epochs that still fit at the mean step and validation times so far is set as
``num_epochs`` and as the poly learning-rate schedule's length, so the schedule decays to its end when the
budget runs out, as it would in a full run; within an epoch, training stops at the step after which the
epoch's validation would no longer fit (so the last epoch may be shorter). Epochs are cut to 10 training and 2
validation iterations (nnU-Net: 250 and 50) so that the schedule can be fitted to a budget of minutes.

The final validation of the fold (sliding windows over the fold's validation cases) is skipped: the benchmark
scores held-out cases with ``nnUNetv2_predict`` instead.
"""

import os
import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET_ENV = "VS_NNUNET_BUDGET_S"


class nnUNetTrainerBudget(nnUNetTrainer):
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ[BUDGET_ENV])
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2

    def run_training(self):
        start = time.perf_counter()
        self.on_train_start()
        step_times: list[float] = []
        validation_times: list[float] = []

        def left() -> float:
            return self.budget_s - (time.perf_counter() - start)

        def next_step_fits() -> bool:
            # One more training step and the epoch's validation, at their mean times so far.
            return left() >= float(np.mean(step_times)) + float(np.mean(validation_times or [0.0]))

        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                if train_outputs and not next_step_fits():
                    break
                step_start = time.perf_counter()
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                step_times.append(time.perf_counter() - step_start)
            self.on_train_epoch_end(train_outputs)
            validation_start = time.perf_counter()
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)
                ]
                self.on_validation_epoch_end(val_outputs)
            validation_times.append(time.perf_counter() - validation_start)
            self.on_epoch_end()
            epoch_s = float(np.mean(step_times)) * self.num_iterations_per_epoch + float(np.mean(validation_times))
            # Whole epochs that fit, or one shortened epoch when only a few steps do.
            more = max(0, int(left() // epoch_s)) or int(next_step_fits())
            self.num_epochs = self.current_epoch + more
            self.lr_scheduler.max_steps = max(self.num_epochs, 1)
            self.print_to_log_file(f"budget: {left():.1f} s left, {self.num_epochs} epochs planned")
        self.on_train_end()
        self.print_to_log_file(f"budget: training took {time.perf_counter() - start:.1f} s of {self.budget_s:.1f} s")

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (the benchmark predicts held-out cases instead)")
