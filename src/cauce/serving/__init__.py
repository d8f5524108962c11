"""The prediction server (``python -m cauce.serving``): the serving image's program."""

# The admin token travels in the environment, not on the command line, where any local
# user could read it from the process list. Here, not in server.py, so that the deploy
# step (in the base image, which has no server dependencies) can name it.
ADMIN_TOKEN_ENV = "CAUCE_SERVING_ADMIN_TOKEN"
