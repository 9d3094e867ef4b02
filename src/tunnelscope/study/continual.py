"""The continual-learning experiment's part of a study (the paper's Table 2; workflow
rules continual.smk): its networks, their directory names and the params of its rules.
"""

from __future__ import annotations

from tunnelscope.registry import COMPOSED, TRAINED, network_slug
from tunnelscope.study.params import embed_settings, probe_settings, solver_settings, sorted_params


class ContinualStudy:
    """The continual runs of a Study (``self.runs``, ``self.config``): mixed into Study."""

    def continual_networks(self) -> list[tuple[str, str]]:
        """(directory name, table label) of every configuration, in the table's order."""
        labels = [*COMPOSED, *(e["name"] for e in self.config["continual"]["finetune"])] if self.runs else []
        return [(network_slug(label), label) for label in labels]

    def continual_label(self, network: str) -> str:
        return dict(self.continual_networks())[network]

    def continual_finetune(self, network: str) -> dict:
        """The finetune entry of a configuration's directory name."""
        return next(e for e in self.config["continual"]["finetune"] if network_slug(e["name"]) == network)

    def run_transform_tag(self, run: str) -> str:
        """The eval transform of a continual run's ID set (its prepared store's tag)."""
        r = self.runs[run]
        return self._transform_tag(r, r.id_dataset)

    def run_prepared_path(self, run: str) -> str:
        return self.paths.path("prepared", dataset=self.runs[run].id_dataset, transform=self.run_transform_tag(run))

    def _task(self, index: int) -> dict:
        section = self.config["continual"]
        return {"index": index, "classes": list(section["tasks"][index - 1]), "head": section["head"]}

    def _run_common(self, run: str) -> dict:
        r = self.runs[run]
        return {
            **r.variables,
            "model": r.model,
            "normalization": self._normalization(r, r.id_dataset),
            "compute": self._compute(),
        }

    def continual_train_params(self, run: str, network: str) -> dict:
        """Task 1 (E1+T1) or task 2 (E2+T2, from the E1+T1 weights)."""
        task = TRAINED[self.continual_label(network)]
        return sorted_params({**self._run_common(run), "training": self.runs[run].training, "task": self._task(task)})

    def continual_finetune_params(self, run: str, network: str) -> dict:
        entry = self.continual_finetune(network)
        finetune = {
            "start": entry["start"],
            "train": sorted(entry["train"]),
            "freeze_norm_stats": self.config["continual"]["freeze_norm_stats"],
        }
        return sorted_params(
            {
                **self._run_common(run),
                "training": self.runs[run].finetune_training,
                "task": self._task(entry["task"]),
                "finetune": finetune,
            }
        )

    def continual_swap_params(self, run: str) -> dict:
        section = self.config["continual"]
        r = self.runs[run]
        return sorted_params(
            {
                **r.variables,
                "model": r.model,
                "side": self.config["embed"]["side"],
                "threshold": section["tunnel_threshold"],
                "curve": section["tunnel_curve"],
            }
        )

    def continual_evaluate_params(self, run: str, network: str) -> dict:
        """Embed settings, the probe's, and per task which layers: every layer where the network
        gives its own task's ID curve (E1+T1 on task 1, E2+T2 on task 2), else the last."""
        own = TRAINED.get(self.continual_label(network))
        embed = embed_settings(self.config)
        probe = self.config["probe"]
        probe = probe_settings({**probe, **solver_settings(probe)})
        layers = {str(t): "all" if t == own else "last" for t in (1, 2)}
        return sorted_params(
            {
                **self._run_common(run),
                **embed,
                "probe": probe,
                "tasks": self.config["continual"]["tasks"],
                "layers": layers,
                "network": self.continual_label(network),
            }
        )

    def continual_table_params(self) -> dict:
        section = self.config["continual"]
        runs = {run: r.variables for run, r in self.runs.items()}
        return sorted_params(
            {"score": section["score"], "networks": [list(n) for n in self.continual_networks()], "runs": runs}
        )
