"""The toy pretrained world (DESIGN.md 3.5): tiny versions of the papers' pretrained components, trained
by dimo's own code on toy videos and written in the real folder layouts, so toy configs load them
through the same ``pretrained=`` / ``from_pretrained`` path as paper scale."""
