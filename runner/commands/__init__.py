"""The command line's parts that are not the commands themselves: the argument parser
(``parser``) and the status view, once or refreshed (``status``). ``runner.cli`` holds the
commands."""
