"""nbgrader's configuration for the pico-llm course (run nbgrader from this folder).

source/NN_lesson/NN_lesson.ipynb is written by `make exercises` from the lessons: do not edit it by
hand (edit the lesson in notebooks/ and rebuild). See instructor/README.md for the whole round trip.
"""

c = get_config()  # noqa: F821 (nbgrader defines get_config when it reads this file)

c.CourseDirectory.course_id = "pico-llm"
c.CourseDirectory.root = "."
# The graded cells run the kit's checks; a lesson runs well under a minute in the smoke profile
# (export PICOLLM_PROFILE=smoke before `nbgrader autograde`), but a cell that trains may take a while on
# a slow machine, so each cell gets 10 minutes before nbgrader stops it.
c.Execute.timeout = 600
