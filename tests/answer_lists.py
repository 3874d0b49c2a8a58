"""The two registers the wrong-answer files share: ``wrong(task_id, words)`` appends ``(task_id, fn, words)`` to a
list of answers that must fail naming ``words``; ``rewrite(task_id)`` appends ``(task_id, fn)`` to a list of correct
rewrites that must pass. Each file makes its own pair of lists with :func:`registers`."""


def registers():
    """``(wrong_answers, wrong, correct_rewrites, rewrite)``: two fresh lists and the decorators that fill them."""
    wrong_answers: list = []
    correct_rewrites: list = []

    def wrong(task_id: str, words: str):
        def register(fn):
            wrong_answers.append((task_id, fn, words))
            return fn

        return register

    def rewrite(task_id: str):
        def register(fn):
            correct_rewrites.append((task_id, fn))
            return fn

        return register

    return wrong_answers, wrong, correct_rewrites, rewrite
