"""Classroom assignments from the book's chapters: generate student notebooks, grade them.

``python -m mae_from_scratch.assignments --help`` shows the commands.  Everything reads a
book folder (one holding ``_toc.yml``, ``_config.yml`` and ``notebooks/``) that it is given,
or finds from the working directory upwards; nothing is read from where the package is
installed, so an instructor can install the package and point it at any copy of the book.

One module per idea, each importing only those above it:

================  ===========================================================
module            what it holds
================  ===========================================================
``book``          the book folder, its chapters (``_toc.yml``), its settings
``cells``         the markers, nbgrader's cell metadata, ``annotate_notebook``
``generation``    student notebooks from the chapters
``kernel_guard``  the grader's own cell in each kernel: tampering undone and flagged,
                  the package calls an exercise makes, found at run time
``checks``        the instructor's checks put back into a submission
``submissions``   what counts as a submission, and which chapter it is
``gradebook``     the CSV and summary, and the checks on where they go
``grading``       running each submission with nbval, isolated from the others
``cli``           ``python -m mae_from_scratch.assignments``
================  ===========================================================
"""

from .book import CHAPTER_RE, Settings, book_folder, chapters, find_book, settings
from .cells import (ANSWER_STUB, BEGIN_HIDDEN, BEGIN_SOLUTION, CHECK_OUTPUT, CODE_STUB,
                    END_HIDDEN, END_SOLUTION, MODEL_ANSWER, annotate_notebook, checks_output,
                    grade_id, is_check, is_solution, is_written, student_source,
                    without_hidden_tests)
from .generation import SETUP_PACKAGE, colab_link, generate, student_notebook
from .kernel_guard import MARK
from .checks import check_ids, exercise_names, exercise_of, grading_notebook
from .submissions import Submission, chapter_of, decide_chapter, find
from .gradebook import check_out, summary
from .grading import Result, grade, grade_one, grading_env, stop_run
from .cli import main

__all__ = [
    "CHAPTER_RE", "Settings", "book_folder", "chapters", "find_book", "settings",
    "ANSWER_STUB", "BEGIN_HIDDEN", "BEGIN_SOLUTION", "CHECK_OUTPUT", "CODE_STUB", "END_HIDDEN",
    "END_SOLUTION", "MODEL_ANSWER", "annotate_notebook", "checks_output", "grade_id",
    "is_check", "is_solution", "is_written", "student_source", "without_hidden_tests",
    "SETUP_PACKAGE", "colab_link", "generate", "student_notebook",
    "MARK", "check_ids", "exercise_names", "exercise_of", "grading_notebook",
    "Submission", "chapter_of", "decide_chapter", "find", "check_out", "summary",
    "Result", "grade", "grade_one", "grading_env", "stop_run", "main",
]
