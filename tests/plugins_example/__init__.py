"""A user's own loss module, outside prefopt: the plug-in test trains with it via loss_modules=[...]."""
