"""Module-level Feast objects for the `feast` CLI (`feast -c features apply`), which collects
them from the repository's Python files. The sources live in the workspace named by
RECSYS_HOME (see feature_store.yaml). Code should call `features.store.apply` instead.

The registry records the sources' absolute paths; after the workspace moves, set RECSYS_HOME to
its new folder: `recsys` re-points the registry on its next open (`features.store.repoint_registry`)
and this module builds the definitions over the new folder."""

from features.definitions import build_definitions
from recsys.config import load_settings
from recsys.workspace import Workspace

_definitions = build_definitions(Workspace.at(load_settings().home).feature_sources_dir)
user = _definitions.user
item = _definitions.item
item_content = _definitions.views["item_content"]
item_behaviour = _definitions.views["item_behaviour"]
user_behaviour = _definitions.views["user_behaviour"]
