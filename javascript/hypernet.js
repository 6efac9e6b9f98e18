// hypernet in the AUTOMATIC1111 webui's Train page.
// Our "Create hypernet" and "Train hypernet" sub-tabs sit in the page's left column, beside the webui's own output
// column (#ti_gallery_container), which they never use. While one of them is shown, its side column (buttons,
// status, loss plot, previews) is moved into that right-hand column, where it stays in view, and the webui's own
// outputs there are hidden; on the webui's own sub-tabs the column is as the webui made it. Gradio keeps updating
// a moved component, since it tracks the element, not its place. Forge and the standalone UI have no such column:
// there the side column stays beside the form.
(function () {
    const PAIRS = [["hypernet_create_tab", "hypernet_create_side"], ["hypernet_train_tab", "hypernet_train_side"]];
    const BUILTIN = ["ti_output", "ti_gallery", "ti_progress", "ti_error"];

    function byId(id) {
        const app = typeof gradioApp === "function" ? gradioApp() : document;
        return app.querySelector("#" + id);
    }

    function isShown(tab) {
        return tab !== null && window.getComputedStyle(tab).display !== "none";
    }

    function place() {
        const column = byId("ti_gallery_container");
        if (column === null) {
            return;
        }
        let active = false;
        for (const [tabId, sideId] of PAIRS) {
            const tab = byId(tabId);
            const side = byId(sideId);
            if (tab === null || side === null) {
                continue;
            }
            if (side.parentElement !== column) {
                column.prepend(side);
            }
            const shown = isShown(tab);
            side.style.display = shown ? "" : "none";
            active = active || shown;
        }
        for (const id of BUILTIN) {
            const element = byId(id);
            if (element !== null) {
                element.style.display = active ? "none" : "";
            }
        }
    }

    function watchTabs() {
        const tabs = byId("train_tabs");
        if (tabs === null || tabs.dataset.hypernetWatched) {
            return;
        }
        tabs.dataset.hypernetWatched = "1";
        // Switching sub-tabs only changes styles, which the webui's onUiUpdate observer does not report.
        new MutationObserver(place).observe(tabs, {attributes: true, attributeFilter: ["style"], subtree: true});
        tabs.addEventListener("click", () => setTimeout(place, 0));
        place();
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(watchTabs);
    }
    if (typeof onUiUpdate === "function") {
        onUiUpdate(watchTabs);
    }
})();
