"""The settings, declared once, by section.

``base`` holds the :class:`~prefork_lb.settings.base.Setting` descriptor and its converters;
``server``, ``proxy``, ``http`` and ``logs`` each declare one group of settings as class
attributes of a plain class. :class:`prefork_lb.config.Config` inherits those classes, so every
setting is a typed attribute of a config, and ``prefork_lb.config`` collects the registry from
them in declaration order. A new setting is one more ``Setting(...)`` line in its section's
class (and a regenerated ``docs/reference/settings.md``).
"""

from __future__ import annotations
