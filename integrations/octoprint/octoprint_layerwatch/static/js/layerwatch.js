/* LayerWatch tab and navbar badge: what the plugin heard from LayerWatch's monitor (GET /api/plugin/layerwatch).
 * Everything shown is bound as text or as an image URL of the plugin's own API: nothing from the network becomes
 * HTML. */
$(function () {
    function LayerWatchViewModel(parameters) {
        var self = this;
        self.loginState = parameters[0];
        self.broker = ko.observable("");
        self.printer = ko.observable("");
        self.job = ko.observable("");
        self.dashboardUrl = ko.observable("");
        self.badge = ko.observable("");
        self.last = ko.observable(null);
        self.incidents = ko.observableArray([]);
        self.frameUrl = ko.observable("");
        self.overlayUrl = ko.observable("");

        self.badgeShort = ko.pureComputed(function () {
            var text = self.badge();
            return text.length > 60 ? text.substring(0, 57) + "..." : text;
        });
        self.lastTitle = ko.pureComputed(function () {
            var last = self.last();
            return last ? last.layer + " of " + last.job : "";
        });

        self.imageUrl = function (kind, job, layer) {
            if (layer === null || layer === undefined) return "";
            return API_BASEURL + "plugin/layerwatch?image=" + kind + "&job=" + encodeURIComponent(job) + "&layer=" + layer;
        };
        self.percent = function (value) {
            return value === undefined || value === null ? "-" : (100 * value).toFixed(2) + " %";
        };
        self.mm2 = function (value) {
            return value === undefined || value === null ? "-" : value.toFixed(1) + " mm²";
        };
        self.when = function (t) {
            return t ? new Date(t * 1000).toLocaleTimeString() : "";
        };
        // the figures the reason names (the rule's own quantity), not every metric of the layer
        self.numbers = function (metrics, reason) {
            var out = [];
            for (var k in metrics || {}) {
                if (Object.prototype.hasOwnProperty.call(metrics, k) && (reason || "").indexOf(k) >= 0) {
                    out.push(k + " " + (+metrics[k]).toPrecision(3));
                }
            }
            return out.join(", ");
        };

        self.refresh = function () {
            if (!self.loginState.isUser()) return;
            OctoPrint.get("api/plugin/layerwatch").done(function (data) {
                self.broker(data.broker || "");
                self.printer(data.printer || "");
                self.job(data.job || "");
                self.dashboardUrl(/^https?:\/\//.test(data.dashboard_url || "") ? data.dashboard_url : "");
                self.badge(data.badge || "");
                var last = data.last;
                self.last(last);
                self.frameUrl(last && last.has_frame ? self.imageUrl("frame", last.job, last.layer) : "");
                self.overlayUrl(last && last.has_overlay ? self.imageUrl("overlay", last.job, last.layer) : "");
                self.incidents(data.incidents || []);
            });
        };

        self.onDataUpdaterPluginMessage = function (plugin, data) {
            if (plugin === "layerwatch") self.refresh();
        };
        self.onUserLoggedIn = self.refresh;
        self.onStartupComplete = self.refresh;
    }

    OCTOPRINT_VIEWMODELS.push({
        construct: LayerWatchViewModel,
        dependencies: ["loginStateViewModel"],
        elements: ["#navbar_plugin_layerwatch", "#tab_plugin_layerwatch"]
    });
});
