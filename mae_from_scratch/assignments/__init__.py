"""Classroom assignments from the book's chapters: generate student notebooks, grade them.

``python -m mae_from_scratch.assignments --help`` shows the commands.  Everything reads a
book folder (one holding ``_toc.yml``, ``_config.yml`` and ``notebooks/``) that it is given,
or finds from the working directory upwards; nothing is read from where the package is
installed, so an instructor can install the package and point it at any copy of the book.

One module per idea, each importing only those above it:

==============  =============================================================
module          what it holds
==============  =============================================================
``book``        the book folder, its chapters (``_toc.yml``), its settings
``cells``       the markers, nbgrader's cell metadata, ``annotate_notebook``
``generation``  student notebooks from the chapters
``flags``       exercise cells that call the package instead of their own code
``grading``     running submissions with nbval, the gradebook and summary
``cli``         ``python -m mae_from_scratch.assignments``
==============  =============================================================
"""

from .book import CHAPTER_RE, Settings, book_folder, chapters, find_book, settings
from .cells import (ANSWER_STUB, BEGIN_HIDDEN, BEGIN_SOLUTION, CHECK_OUTPUT, CODE_STUB,
                    END_HIDDEN, END_SOLUTION, MODEL_ANSWER, annotate_notebook, checks_output,
                    grade_id, is_check, is_solution, is_written, student_source,
                    without_hidden_tests)
from .generation import SETUP_PACKAGE, colab_link, generate, student_notebook
from .flags import PACKAGE_NAMES, package_calls
from .grading import (Result, check_ids, grade, grade_one, grading_env, grading_notebook,
                      submissions, summary)
from .cli import main

__all__ = [
    "CHAPTER_RE", "Settings", "book_folder", "chapters", "find_book", "settings",
    "ANSWER_STUB", "BEGIN_HIDDEN", "BEGIN_SOLUTION", "CHECK_OUTPUT", "CODE_STUB", "END_HIDDEN",
    "END_SOLUTION", "MODEL_ANSWER", "annotate_notebook", "checks_output", "grade_id",
    "is_check", "is_solution", "is_written", "student_source", "without_hidden_tests",
    "SETUP_PACKAGE", "colab_link", "generate", "student_notebook",
    "PACKAGE_NAMES", "package_calls",
    "Result", "check_ids", "grade", "grade_one", "grading_env", "grading_notebook",
    "submissions", "summary", "main",
]
