"""The users of a run's dataset, for recommending by user id (``recommend --user``,
``GET /users/{id}/recommendations``): their whole prepared history."""

from __future__ import annotations

from pathlib import Path

from iisan.errors import DatasetError, UnknownUserError


class DatasetUsers:
    """User key -> item ids (oldest first), read from the run's dataset on first use (a
    service that never answers by user never loads them)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._histories: dict[str, list[int]] | None = None

    def history(self, user: str) -> list[int]:
        """``user``'s item ids.

        Raises:
            DatasetError: the run's dataset is not where ``config.json`` says.
            UnknownUserError: no such user.
        """
        if self._histories is None:
            self._histories = self._load()
        if user not in self._histories:
            raise UnknownUserError(f"unknown user {user!r}: the run's dataset has {len(self._histories):,} "
                                   f"users")
        return self._histories[user]

    def _load(self) -> dict[str, list[int]]:
        from iisan.data.dataset import PreparedDataset
        from iisan.run.files import read_run_config

        recorded = read_run_config(self.run_dir)["dataset"]
        try:
            sequences = PreparedDataset.load(recorded).sequences
        except DatasetError as err:
            raise DatasetError(f"a user's history comes from the run's dataset, recorded in "
                               f"{self.run_dir / 'config.json'}: {err}") from None
        return dict(zip(sequences["user_key"].to_list(), sequences["items"].to_list()))
