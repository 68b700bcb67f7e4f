"""A user's own plug-in modules, outside prefopt: a loss (my_losses) and a benchmark (my_benchmark), each
loaded through loss_modules=[...]."""
