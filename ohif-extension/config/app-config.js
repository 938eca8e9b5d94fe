/* OHIF 3.13.2 configuration for the AI anomaly node viewer.
 * Served as /app-config.js by server/serve.mjs, on the same origin as the DICOMweb proxy
 * (/dicom-web -> Orthanc), so the browser needs no CORS and never sees the PACS password. */
window.config = {
  name: 'ai-anomaly-node',
  routerBasename: null,
  // Run-time ES module extension (ohif-extension/src/index.js), loaded with import().
  extensions: ['/anomaly/index.js'],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  // The anomaly overlay (binary SEG) is loaded without the "load segmentation?" prompt.
  disableConfirmationPrompts: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (via viewer proxy)',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '/wado',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      },
    },
  ],
  // Add the AI anomaly panel to the right of the stock viewer (mode "Basic Viewer").
  modesConfiguration: {
    '@ohif/mode-longitudinal': {
      sopClassHandlers: { $unshift: ['ainode-anomaly.sopClassHandlerModule.ai-hidden'] },
      routes: {
        0: {
          layoutInstance: {
            props: {
              rightPanels: { $unshift: ['ainode-anomaly.panelModule.anomaly'] },
              rightPanelClosed: { $set: false },
            },
          },
        },
      },
    },
  },
  // Read by the extension: the node's score list (one request for the whole worklist).
  aiAnomaly: {
    scoresUrl: '/ainode/studies/scores',
    sortFlaggedFirst: true,
  },
};
