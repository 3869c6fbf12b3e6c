() => {
  // Keeps the newest question and the top of its answer in view while the answer streams (#27).
  // The chat boxes do not follow the stream to its end (autoscroll=False in ui/page/chat.py):
  // when a question appears, the box scrolls it towards its top, and keeps doing so as the answer
  // below it grows, until it is there. A reader who scrolls the box is left alone until the next question.
  const LABEL = 36; // px
  const held = new WeakMap(); // box -> {questions, free}
  const hold = () => {
    document.querySelectorAll("#steered .bubble-wrap, #unsteered .bubble-wrap").forEach((box) => {
      let state = held.get(box);
      if (!state) {
        state = { questions: 0, free: false };
        held.set(box, state);
        const free = () => { state.free = true; };
        ["wheel", "touchstart", "keydown", "mousedown"].forEach((e) => box.addEventListener(e, free, { passive: true }));
      }
      const questions = box.querySelectorAll("[data-testid=user]");
      if (questions.length !== state.questions) Object.assign(state, { questions: questions.length, free: false });
      const newest = questions[questions.length - 1];
      // LABEL: the box's label floats over its top edge; the question stops just under it
      if (newest && !state.free) box.scrollTop += newest.getBoundingClientRect().top - box.getBoundingClientRect().top - LABEL;
    });
  };
  new MutationObserver(hold).observe(document.body, { childList: true, subtree: true, characterData: true });
}
